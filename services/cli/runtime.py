"""What every command shares: the configuration and clients of the invocation, the
--json and --request-id options, and the exit codes (0 ok, 1 refused by the service,
2 usage, 3 unreachable)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from services.cli import output
from services.cli.approvals import ApprovalFiled
from services.cli.client import Clients, ServiceError, new_request_id
from services.cli.config import CliConfig, ConfigError, load
from services.cli.money import parse_major
from services.cli.specs import SpecError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (proto field names) for scripts.")]
RequestIdOpt = Annotated[
    str, typer.Option("--request-id", help="Idempotency key; generated (and printed) when omitted.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=0, help="At most this many items; 0 = all.")]
CurrencyOpt = Annotated[str, typer.Option("--currency", help="ISO 4217 currency code.")]
RequestApprovalOpt = Annotated[str, typer.Option(
    "--request-approval", metavar="REASON",
    help="Four eyes: file the call for a second admin's approval (with this reason) "
         "instead of making it; prints the approval id (docs/security.md \"Approvals\").")]


@dataclass
class Invocation:
    config_path: str | None = None
    _config: CliConfig | None = None
    _clients: Clients | None = field(default=None, repr=False)

    @property
    def config(self) -> CliConfig:
        if self._config is None:
            self._config = load(self.config_path)
        return self._config

    @property
    def clients(self) -> Clients:
        if self._clients is None:
            self._clients = Clients(self.config)
        return self._clients

    def close(self) -> None:
        if self._clients is not None:
            self._clients.close()


def invocation(ctx: typer.Context) -> Invocation:
    root = ctx.find_root()
    if not isinstance(root.obj, Invocation):
        root.obj = Invocation()
        root.call_on_close(root.obj.close)
    return root.obj


def clients(ctx: typer.Context, request_approval: str = "") -> Clients:
    """The invocation's clients; with `request_approval` (a reason), guarded RPCs are
    filed for a second admin instead of made (services/cli/approvals.py)."""
    c = invocation(ctx).clients
    return c.four_eyes(reason=request_approval) if request_approval else c.four_eyes()


def request_id(given: str, prefix: str) -> str:
    """The caller's id, or a fresh one printed to stderr so a retry can reuse it."""
    if given:
        return given
    rid = new_request_id(prefix)
    output.err_console().print(f"request id: {rid}")
    return rid


def major(text: str, currency: str, what: str = "amount") -> int:
    try:
        return parse_major(text, currency)
    except ValueError as exc:
        raise SpecError(f"{what}: {exc}") from None


def usage(message: str) -> typer.Exit:
    output.err_console().print(f"[red]usage:[/red] {escape(message)}")
    return typer.Exit(EXIT_USAGE)


def handled(fn: F) -> F:
    """Turns the failures of a command into its exit code and a message on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ServiceError as exc:
            err = output.err_console()
            if exc.unreachable:
                err.print(f"[red]unreachable:[/red] {escape(str(exc))}")
                raise typer.Exit(EXIT_UNREACHABLE) from None
            err.print(f"[red]refused:[/red] {escape(str(exc))}")
            raise typer.Exit(EXIT_REFUSED) from None
        except (ConfigError, SpecError) as exc:
            raise usage(str(exc)) from None
        except ApprovalFiled as filed:
            print_filed(filed)
            return None

    return wrapper  # type: ignore[return-value]


def filed_line(filed: ApprovalFiled) -> str:
    a = filed.approval
    return (f"approval {a.approval_id} filed: {a.summary}. Another admin approves it with "
            f"`clearhouse {filed.service} approvals approve {a.approval_id}`")


def print_filed(filed: ApprovalFiled) -> None:
    """A guarded call filed instead of made: nothing changed yet."""
    output.console().print(escape(filed_line(filed)))
