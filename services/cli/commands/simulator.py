"""The payout gateway simulator (development and the demo only): steer what it does with
the next payouts, return a paid one, list what it holds."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from clearhouse.payout.v1 import payout_pb2
from clearhouse.payoutsim.v1 import payoutsim_pb2 as pb

from services.cli import output as out
from services.cli.runtime import JsonOpt, clients, handled

simulator = typer.Typer(help="The payout gateway simulator (development only): behave, "
                             "return, list.", no_args_is_help=True)


def _behaviour(name: str) -> Any:
    try:
        return pb.Behaviour.Value("BEHAVIOUR_" + name.upper())
    except ValueError:
        names = [n.removeprefix("BEHAVIOUR_").lower() for n in pb.Behaviour.keys()
                 if not n.endswith("UNSPECIFIED")]
        raise typer.BadParameter(f"one of {', '.join(names)}") from None


@simulator.command("behave")
@handled
def behave(ctx: typer.Context,
           behaviour: Annotated[str, typer.Argument(
               help="succeed, fail, lose_answer, time_out, unavailable or processing.")],
           times: Annotated[int, typer.Option(min=0, help="For this many submissions "
                                                          "(0 = until changed).")] = 1,
           merchant: Annotated[str, typer.Option(help="Only this merchant's payouts.")] = "",
           ) -> None:
    """Make the simulated gateway fail, lose answers, time out… for the next payouts.

    Example: clearhouse simulator behave fail --times 1 --merchant M02
    """
    clients(ctx).simulator.SetBehaviour(pb.SetBehaviourRequest(
        behaviour=_behaviour(behaviour), times=times, merchant_id=merchant))
    scope = f"merchant {merchant}" if merchant else "every merchant"
    count = f"the next {times} submissions" if times else "every submission"
    out.console().print(f"gateway: {behaviour.upper()} for {count} of {scope}")


@simulator.command("return")
@handled
def return_payout(ctx: typer.Context, payout_id: str,
                  reason: Annotated[str, typer.Option(help="The bank's reason.")] = "account closed",
                  json: JsonOpt = False) -> None:
    """Mark a paid payout returned by the bank (退票); settlement books it back.

    Example: clearhouse simulator return po-st-20261013-M03 --reason "account closed"
    """
    p = clients(ctx).simulator.ReturnPayout(pb.ReturnPayoutRequest(
        instruction_id=payout_id, reason=reason)).payout
    if json:
        out.emit_json(p)
        return
    out.console().print(f"{payout_id} returned by the bank: {reason}")


@simulator.command("list")
@handled
def list_simulated(ctx: typer.Context, json: JsonOpt = False) -> None:
    """What the simulated gateway holds, with how often each payout was submitted and paid.

    Example: clearhouse simulator list
    """
    found = list(clients(ctx).simulator.ListSimulatedPayouts(
        pb.ListSimulatedPayoutsRequest()).payouts)
    if json:
        out.emit_json(found)
        return
    out.console().print(out.table(
        f"simulated payouts ({len(found)})",
        ["instruction", "merchant", "amount", "state", "submitted", "paid"],
        [[p.payout.instruction_id, p.payout.merchant_id, out.money(p.payout.amount),
          out.enum(payout_pb2.PayoutState, p.payout.state, "PAYOUT_STATE_"), p.submit_count, p.paid_count] for p in found],
        right=["amount", "submitted", "paid"]))
