"""A development CA, certificates and tokens (`make up`, the tests, the benchmarks).

`ensure(folder)` creates on first use, and reuses afterwards:

    ca.pem, ca.key                  the development CA (trust ca.pem; ca.key issues more)
    <service>.pem / .key            each service's certificate: it serves with it and, for
                                    clearing and settlement, calls other services as itself
                                    (SAN <name>.caller.clearhouse)
    <system>.pem / .key             client certificates of the transaction core, trade, payout
                                    and the payout gateway (the simulator calls back with
                                    its server certificate, whose SAN names it too)
    tool.pem / tool.key             the client certificate of people's tools (grpcurl, the
                                    CLI, the console): it names nobody, the token does
    tokens/<name>.token             one bearer token per caller (people and systems)
    identities.toml                 the callers with the SHA-256 of their tokens (what the
                                    services read: no secret in it)

Never for production: the CA key sits beside the certificates.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import trustme

from shared.permissions import (
    ADMIN,
    CLEARING,
    OPERATOR,
    PAYOUT,
    PAYOUT_GATEWAY,
    SERVICE,
    SETTLEMENT,
    TRADE,
    TRANSACTION_CORE,
    VIEWER,
)
from shared.security import CALLER_SAN_SUFFIX, token_hash

# The names each server certificate answers to: loopback for `make up` and the tests, the
# service's own name for compose and Kubernetes.
LOOPBACK = ("localhost", "127.0.0.1", "::1")
SERVERS = {
    "billing": ("billing",),
    "clearing": ("clearing", CLEARING + CALLER_SAN_SUFFIX),
    "settlement": ("settlement", SETTLEMENT + CALLER_SAN_SUFFIX),
    # The simulator calls settlement back as the payout gateway, with this certificate.
    "payout_simulator": ("payout-simulator", PAYOUT_GATEWAY + CALLER_SAN_SUFFIX),
}
SYSTEMS = (TRANSACTION_CORE, TRADE, PAYOUT, PAYOUT_GATEWAY)
TOOL = "tool"
TOOL_SAN = "tools.client.clearhouse"
# People of the development stack: two admins, so that one can approve what the other asks.
PEOPLE = (("ada", ADMIN), ("bea", ADMIN), ("otto", OPERATOR), ("vic", VIEWER))


@dataclass(frozen=True)
class DevPKI:
    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def identities_file(self) -> Path:
        return self.folder / "identities.toml"

    def cert_file(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key_file(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def token_file(self, name: str) -> Path:
        return self.folder / "tokens" / f"{name}.token"

    def token(self, name: str) -> str:
        return self.token_file(name).read_text().strip()

    def server_env(self, prefix: str, service: str) -> dict[str, str]:
        """The settings a service needs to serve (and call) securely with these files."""
        return {
            f"{prefix}TLS_CERT_FILE": str(self.cert_file(service)),
            f"{prefix}TLS_KEY_FILE": str(self.key_file(service)),
            f"{prefix}TLS_CA_FILE": str(self.ca_file),
            f"{prefix}IDENTITIES_FILE": str(self.identities_file),
        }

    def server_settings(self, service: str) -> dict[str, str]:
        """server_env as keyword arguments of a settings class."""
        return {k.lower(): v for k, v in self.server_env("", service).items()}


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _complete(pki: DevPKI) -> bool:
    """Whether the folder holds every file this version issues (a folder made before a
    caller was added, say the payout gateway, is made again)."""
    if not pki.identities_file.exists():
        return False
    names = [*SERVERS, *SYSTEMS, TOOL]
    if not all(pki.cert_file(n).exists() and pki.key_file(n).exists() for n in names):
        return False
    callers = [*SYSTEMS, CLEARING, SETTLEMENT, *(n for n, _ in PEOPLE)]
    if not all(pki.token_file(n).exists() for n in callers):
        return False
    # Server certificates name what this version expects them to (SANs added later).
    text = pki.identities_file.read_text()
    return all(f'name = "{n}"' in text for n in callers) and _sans_current(pki)


def _sans_current(pki: DevPKI) -> bool:
    from cryptography import x509

    for name, names in SERVERS.items():
        cert = x509.load_pem_x509_certificate(pki.cert_file(name).read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if not set(names) <= set(sans.get_values_for_type(x509.DNSName)):
            return False
    return True


def ensure(folder: str | Path) -> DevPKI:
    """The development PKI in `folder`, created when it is missing or incomplete."""
    pki = DevPKI(Path(folder))
    if _complete(pki):
        return pki
    pki.folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Clearhouse development CA")
    _write(pki.ca_file, ca.cert_pem.bytes())
    _write(pki.folder / "ca.key", ca.private_key_pem.bytes(), private=True)
    issued = {name: (*LOOPBACK, *names) for name, names in SERVERS.items()}
    issued |= {name: (name + CALLER_SAN_SUFFIX,) for name in SYSTEMS}
    issued[TOOL] = (TOOL_SAN,)
    for name, sans in issued.items():
        cert = ca.issue_cert(*sans, organization_name="Clearhouse", organization_unit_name=name)
        _write(pki.cert_file(name), b"".join(p.bytes() for p in cert.cert_chain_pems))
        _write(pki.key_file(name), cert.private_key_pem.bytes(), private=True)
    lines = [
        "# Callers of the development stack and the SHA-256 of their bearer tokens.",
        "# The tokens themselves are in tokens/<name>.token (never in this file).",
    ]
    callers = [*((n, SERVICE) for n in (*SYSTEMS, CLEARING, SETTLEMENT)), *PEOPLE]
    for name, role in callers:
        token = "chs_" + secrets.token_urlsafe(32)
        _write(pki.token_file(name), (token + "\n").encode(), private=True)
        lines += ["", "[[callers]]", f'name = "{name}"', f'role = "{role}"',
                  f'token_sha256 = "{token_hash(token)}"']
    # Last: its presence means the folder is complete.
    _write(pki.identities_file, ("\n".join(lines) + "\n").encode())
    return pki


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.devpki FOLDER`: create (or keep) a development PKI there."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m shared.devpki FOLDER", file=sys.stderr)
        return 2
    pki = ensure(args[0])
    print(f"development CA, certificates and tokens in {pki.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
