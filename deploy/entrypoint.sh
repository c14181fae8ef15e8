#!/bin/sh
# Usage: <service> [serve|migrate [--down base]]
#   service: billing | clearing | settlement | payout-simulator | console
# `exec` makes Python PID 1 so SIGTERM reaches the service's graceful shutdown.
set -eu

usage() {
    echo "usage: <billing|clearing|settlement|payout-simulator> [serve|migrate [--down base]] | console | devpki FOLDER" >&2
}

svc="${1:-}"
case "$svc" in
    billing|clearing|settlement) ;;
    # A development CA, certificates and tokens into a folder (compose's `pki` step).
    devpki) shift; exec python -m shared.devpki "$@" ;;
    payout-simulator|payout_simulator) svc=payout_simulator ;;
    console) shift; exec python -m services.console "$@" ;;
    -h|--help|"") usage; exit 64 ;;
    *) echo "unknown service: $svc" >&2; usage; exit 64 ;;
esac
shift
exec python -m "services.$svc" "$@"
