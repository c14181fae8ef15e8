"""`clearhouse`: the operations CLI.

Exit codes: 0 ok, 1 refused by the service (or the check found violations), 2 usage
(bad option, file or configuration), 3 a service unreachable (nothing was done; retry).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from services.cli import output
from services.cli.commands import approvals, audit, billing, clearing, settlement, simulator
from services.cli.runtime import invocation

app = typer.Typer(
    name="clearhouse",
    help="Operate Clearhouse: fee rules, fee accounts and bills, clearing details, "
         "settlement runs, statements, payouts and the ledger.\n\n"
         "Example: clearhouse runs start 2026-10-13",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(
        "--config", help="TOML config file (default $CLEARHOUSE_CONFIG, then "
                         "~/.config/clearhouse/cli.toml).")] = None,
) -> None:
    """Operate Clearhouse from the command line."""
    invocation(ctx).config_path = config


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Show where the CLI will connect and where that came from (no secrets printed).

    Example: CLEARHOUSE_SETTLEMENT_ADDRESS=10.0.0.5:50053 clearhouse config
    """
    from services.cli.runtime import handled

    @handled
    def run() -> None:
        c = invocation(ctx).config
        rows = [["billing", c.billing_address], ["clearing", c.clearing_address],
                ["settlement", c.settlement_address],
                ["payout simulator", c.payout_simulator_address],
                ["tls", "on" if c.tls else "off"],
                ["token", "set" if (c.token or c.token_file) else "none"],
                ["source", c.source]]
        output.console().print(output.table("configuration", ["what", "value"], rows))

    run()


app.add_typer(billing.rules, name="rules")
app.add_typer(billing.accounts, name="accounts")
app.add_typer(billing.bills, name="bills")
app.add_typer(settlement.profiles, name="profiles")
app.add_typer(settlement.calendar, name="calendar")
app.add_typer(clearing.details, name="details")
app.add_typer(clearing.exceptions, name="exceptions")
app.add_typer(clearing.pending, name="pending-fees")
app.add_typer(clearing.batches, name="batches")
app.add_typer(settlement.runs, name="runs")
app.add_typer(settlement.settlements, name="settlements")
app.add_typer(settlement.statements, name="statements")
app.add_typer(settlement.payouts, name="payouts")
app.add_typer(settlement.merchants, name="merchants")
app.add_typer(settlement.ledger, name="ledger")
app.add_typer(simulator.simulator, name="simulator")
app.command("check")(settlement.check)
# `clearhouse billing audit`, `clearhouse clearing audit`, `clearhouse settlement audit`,
# and each service's `approvals` (list, show, request, approve, reject).
for _service, _group in audit.groups.items():
    _group.add_typer(approvals.approvals_for(_service), name="approvals")
    _group.info.help = f"{_service}: its audit trail and its four-eyes approvals."
    app.add_typer(_group, name=_service)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
