"""Running the fuzzed contract: the three real services together, each request sent as
bytes, and what every answer must be.

For each call (see `FuzzStack.send`):
- never INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED (nor DEADLINE_EXCEEDED, UNIMPLEMENTED,
  DATA_LOSS, CANCELLED);
- INVALID_ARGUMENT carries a google.rpc.BadRequest with a field violation, every other
  refusal a google.rpc.ErrorInfo reason; so does each item error inside a batch answer;
- a refused call changed nothing: a checksum of every row of every table of the three
  schemas is the same before and after (an accepted call may write);
- afterwards every service is SERVING (grpc.health.v1) and answers a valid list call.

A problem becomes a `Finding` (collected, not raised, so one run lists every distinct
problem); the test fails at the end of each RPC's run if it found any.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import (
    MAX_DESCRIPTION_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_METADATA_VALUE_LENGTH,
    MAX_VIOLATIONS,
)
from tests.e2e.stack import FAST_CLEARING, FAST_SETTLEMENT
from tests.settlement.conftest import Simulator, start_simulator
from tests.support.four_eyes import TRAIL_AUDIT_METHODS, TRAIL_TABLES
from tests.support.fuzz_requests import (
    GARBAGE_BODIES,
    Mutation,
    Rpc,
    Site,
    all_rpcs,
    apply,
    base_request,
    invalid_utf8_body,
)
from tests.support.harness import ServiceHandle, drop, launch
from tests.support.page_tokens import forged

CALL_TIMEOUT_S = 60.0
NEVER = {
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS, grpc.StatusCode.CANCELLED,
}
NEVER_NUMBERS = {c.value[0]: c for c in NEVER}
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


@dataclass(frozen=True)
class Finding:
    service: str
    rpc: str
    field: str
    kind: str
    code: str
    problem: str
    message: str = field(compare=False, hash=False)
    body: bytes = field(default=b"", compare=False, hash=False, repr=False)


@dataclass
class Answer:
    code: grpc.StatusCode
    error: grpc.aio.AioRpcError | None
    response: Message | None


def status_problems(code: int, message: str, details: Any, where: str) -> list[str]:
    """What is wrong with a refusal's code, message and details (a google.rpc.Status):
    the code, the detail it must carry, and the sizes docs/validation.md promises."""
    if code in NEVER_NUMBERS:
        return [f"{where}{CODE_NAMES[code]}"]
    if code == 0:
        return []
    problems = []
    if len(message) > MAX_MESSAGE_LENGTH:
        problems.append(f"{where}message of {len(message)} characters")
    bad = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    has_bad = has_info = False
    for detail in details:
        if detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
            has_bad = has_bad or len(bad.field_violations) > 0
            if len(bad.field_violations) > MAX_VIOLATIONS:
                problems.append(f"{where}{len(bad.field_violations)} field violations")
            if any(len(v.description) > MAX_DESCRIPTION_LENGTH or len(v.field) > MAX_DESCRIPTION_LENGTH
                   for v in bad.field_violations):
                problems.append(f"{where}a field violation longer than {MAX_DESCRIPTION_LENGTH}")
        elif detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            has_info = has_info or bool(info.reason)
            if any(len(v) > MAX_METADATA_VALUE_LENGTH for v in info.metadata.values()):
                problems.append(f"{where}ErrorInfo metadata longer than {MAX_METADATA_VALUE_LENGTH}")
    if code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
        if not has_bad:
            problems.append(f"{where}INVALID_ARGUMENT without BadRequest violations")
    elif not has_info:
        problems.append(f"{where}{CODE_NAMES.get(code, code)} without ErrorInfo reason")
    return problems


def unknown_fields(request: Descriptor, details: Any) -> list[str]:
    """The BadRequest field paths of a refusal that name no field of the request
    ("requests[0].transaction.amount" must walk the request's descriptor; "" is the
    whole body)."""
    out = []
    bad = error_details_pb2.BadRequest()
    for detail in details:
        if not detail.Is(bad.DESCRIPTOR):
            continue
        detail.Unpack(bad)
        for violation in bad.field_violations:
            if violation.field and not _resolves(request, violation.field):
                out.append(violation.field)
    return out


def _resolves(desc: Descriptor | None, path: str) -> bool:
    for part in path.split("."):
        name = part.split("[", 1)[0]
        if desc is None or name not in desc.fields_by_name:
            return False
        desc = desc.fields_by_name[name].message_type
    return True


def _item_statuses(msg: Message) -> list[status_pb2.Status]:
    """Every google.rpc.Status set anywhere in an answer (a batch's item errors)."""
    out: list[status_pb2.Status] = []
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        values = value if fd.is_repeated else [value]
        for item in values:
            if fd.message_type.full_name == "google.rpc.Status":
                out.append(item)
            elif fd.message_type.GetOptions().map_entry:
                continue
            else:
                out.extend(_item_statuses(item))
    return out


def _outcomes(msg: Message) -> tuple[int, int]:
    """(items, refused items) of a batch answer: the elements of its repeated fields
    whose message holds a google.rpc.Status, refused when that status is set."""
    items = refused = 0
    for fd, value in msg.ListFields():
        if fd.message_type is None or not fd.is_repeated:
            continue
        status_fields = [f.name for f in fd.message_type.fields
                         if f.message_type is not None
                         and f.message_type.full_name == "google.rpc.Status"]
        if not status_fields:
            continue
        for item in value:
            items += 1
            refused += any(item.HasField(name) for name in status_fields)
    return items, refused


def refused(answer: Answer) -> bool:
    """A refusal: an error, or a batch answer whose every item is an error."""
    if answer.error is not None:
        return True
    assert answer.response is not None
    items, errors = _outcomes(answer.response)
    return items > 0 and errors == items


def judge(answer: Answer) -> list[str]:
    """The problems of one answer, whatever the request was."""
    if answer.error is None:
        assert answer.response is not None
        return [p for s in _item_statuses(answer.response)
                for p in status_problems(s.code, s.message, s.details, "batch item ")]
    try:
        status = rpc_status.from_call(answer.error)
    except ValueError as exc:  # status details inconsistent with the code or message
        return [f"{answer.code.name} with unreadable status details ({exc})"]
    details = status.details if status is not None else []
    return status_problems(answer.code.value[0], answer.error.details() or "", details, "")


@dataclass
class FuzzStack:
    """billing, clearing (pricing through billing) and settlement (calling clearing,
    billing and the payout gateway simulator), each in a throwaway schema; background
    workers off so that nothing writes between two calls but the calls themselves."""

    handles: dict[str, ServiceHandle]
    simulator: Simulator
    checksum_sql: str = ""
    probes: dict[str, list[tuple[Rpc, bytes]]] = field(default_factory=dict)
    seeds: dict[str, str] = field(default_factory=dict)
    sent: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    findings: dict[Finding, int] = field(default_factory=dict)
    accepted_never_valid: dict[tuple[str, str, str], int] = field(default_factory=dict)
    unknown_violation_fields: dict[tuple[str, str], int] = field(default_factory=dict)
    probe_calls: int = 0
    last_write: bool = False  # whether the last call sent changed any row
    _probe_turn: int = 0
    started: float = field(default_factory=time.monotonic)

    # --- calling ---------------------------------------------------------------------

    async def call(self, rpc: Rpc, body: bytes) -> Answer:
        channel = self.handles[rpc.service].channel
        multicallable = channel.unary_unary(rpc.path)  # bytes in, bytes out
        try:
            raw = await multicallable(body, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            return Answer(err.code(), err, None)
        return Answer(grpc.StatusCode.OK, None, rpc.response_class().FromString(raw))

    async def snapshot(self) -> dict[str, tuple[int, int]]:
        """Row count and an order-free checksum of every table of the three schemas."""
        async with self.handles["billing"].engine.connect() as conn:
            rows = (await conn.execute(text(self.checksum_sql))).all()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def send(
        self, rpc: Rpc, body: bytes, where: str, kind: str, *, never_valid: bool = False,
        undecodable: bool = False, track_writes: bool = False,
    ) -> Answer:
        before = await self.snapshot()
        answer = await self.call(rpc, body)
        self.sent[rpc.label][answer.code.name] += 1
        problems = judge(answer)
        if answer.code == grpc.StatusCode.INVALID_ARGUMENT and answer.error is not None:
            with contextlib.suppress(ValueError):
                status = rpc_status.from_call(answer.error)
                for name in unknown_fields(rpc.method.input_type, status.details if status else []):
                    key = (rpc.label, name)
                    self.unknown_violation_fields[key] = self.unknown_violation_fields.get(key, 0) + 1
        if undecodable and answer.code != grpc.StatusCode.INVALID_ARGUMENT:
            problems.append(f"undecodable body answered {answer.code.name}")
        after = await self.snapshot() if refused(answer) or track_writes else before
        changed = sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t))
        self.last_write = bool(changed)
        if refused(answer):
            if changed:
                problems.append("refused but changed rows of " + ", ".join(changed))
        elif never_valid:
            key = (rpc.label, where, kind)
            self.accepted_never_valid[key] = self.accepted_never_valid.get(key, 0) + 1
        problems += await self.alive(rpc.service)
        for problem in problems:
            self.note(rpc, where, kind, answer, problem, body)
        return answer

    def note(self, rpc: Rpc, where: str, kind: str, answer: Answer, problem: str,
             body: bytes = b"") -> None:
        message = (answer.error.details() or "") if answer.error is not None else ""
        finding = Finding(rpc.service, rpc.name, where, kind, answer.code.name, problem,
                          message[:200], body)
        self.findings[finding] = self.findings.get(finding, 0) + 1

    # --- the fuzzing itself ----------------------------------------------------------

    async def exercise(self, rpc: Rpc, base: Message, site: Site | None,
                       mutation: Mutation | bytes) -> None:
        if isinstance(mutation, bytes):
            try:
                rpc.request_class().FromString(mutation)
                undecodable = False
            except DecodeError:
                undecodable = True
            await self.send(rpc, mutation, "(body)", "random bytes", undecodable=undecodable)
            return
        assert site is not None
        request = apply(base, site, mutation)
        if mutation.forged:
            await self._forge(rpc, request, site, mutation.forged_key)
        await self.send(rpc, request.SerializeToString(), site.text, mutation.kind,
                        never_valid=mutation.never_valid)

    async def _forge(self, rpc: Rpc, request: Message, site: Site, key: Any) -> None:
        """Swap the key of a real token of this list (page size 1) into `request`."""
        probe = type(request)()
        probe.CopyFrom(request)
        holder = probe
        for name, index in site.path[:-1]:
            holder = getattr(holder, name) if index is None else getattr(holder, name)[index]
        holder.page_token = ""  # type: ignore[attr-defined]
        if "page_size" in holder.DESCRIPTOR.fields_by_name:
            holder.page_size = 1  # type: ignore[attr-defined]
        answer = await self.call(rpc, probe.SerializeToString())
        real = getattr(answer.response, "next_page_token", "") if answer.response else ""
        if real:
            target = request
            for name, index in site.path[:-1]:
                target = getattr(target, name) if index is None else getattr(target, name)[index]
            target.page_token = forged(real, key)  # type: ignore[attr-defined]

    async def undecodable_bodies(self, rpc: Rpc) -> None:
        """The fixed bodies that are not the request message, sent as raw bytes."""
        bodies = list(GARBAGE_BODIES)
        utf8 = invalid_utf8_body(base_request(rpc))
        if utf8 is not None:
            bodies.append(("invalid UTF-8 in a string field", utf8))
        for kind, body in bodies:
            try:
                rpc.request_class().FromString(body)
                undecodable = False
            except DecodeError:
                undecodable = True
            await self.send(rpc, body, "(body)", kind, undecodable=undecodable)

    # --- still alive -----------------------------------------------------------------

    async def alive(self, service: str, every_probe: bool = False) -> list[str]:
        problems: list[str] = []
        for name, handle in self.handles.items():
            stub = health_pb2_grpc.HealthStub(handle.channel)
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                if resp.status != health_pb2.HealthCheckResponse.SERVING:
                    problems.append(f"{name} not SERVING afterwards")
            except grpc.aio.AioRpcError as err:
                problems.append(f"{name} health check failed afterwards: {err.code().name}")
        services = list(self.probes) if every_probe else [service]
        for svc in services:
            probes = self.probes.get(svc, [])
            if not probes:
                continue
            chosen = probes if every_probe else [probes[self._probe_turn % len(probes)]]
            self._probe_turn += 1
            for rpc, body in chosen:
                self.probe_calls += 1
                answer = await self.call(rpc, body)
                if answer.code != grpc.StatusCode.OK:
                    problems.append(f"valid {rpc.label} answered {answer.code.name} afterwards")
        return problems

    async def still_serving(self, rpc: Rpc) -> None:
        """After an RPC's run: every service SERVING, every probe answering."""
        for problem in await self.alive(rpc.service, every_probe=True):
            self.note(rpc, "(after the run)", "every probe", Answer(grpc.StatusCode.OK, None, None),
                      problem)

    # --- the run's record ------------------------------------------------------------

    def failures(self, rpc: Rpc | None = None) -> list[Finding]:
        return [f for f in self.findings
                if rpc is None or (f.service == rpc.service and f.rpc == rpc.name)]

    def summary(self, examples: int) -> dict[str, Any]:
        totals: collections.Counter[str] = collections.Counter()
        for codes in self.sent.values():
            totals.update(codes)
        return {
            "examples_per_rpc": examples,
            "seconds": round(time.monotonic() - self.started, 1),
            "requests": sum(totals.values()),
            "codes": dict(totals.most_common()),
            "probe_calls": self.probe_calls,
            "rpcs": {label: {"sent": sum(c.values()), "codes": dict(c.most_common())}
                     for label, c in sorted(self.sent.items())},
            "seed_answers": self.seeds,
            "probes": {s: [r.label for r, _ in p] for s, p in self.probes.items()},
            "findings": [
                {**asdict(f), "count": n,
                 # the request itself, to replay it (not the 1 MB ones)
                 "body": base64.b64encode(f.body).decode() if len(f.body) <= 65536 else None}
                for f, n in self.findings.items()
            ],
            "violations_naming_no_request_field": [
                {"rpc": r, "field": f, "count": n}
                for (r, f), n in sorted(self.unknown_violation_fields.items())
            ],
            "accepted_never_valid": [
                {"rpc": r, "field": f, "kind": k, "count": n}
                for (r, f, k), n in sorted(self.accepted_never_valid.items())
            ],
        }


async def _wait_serving(handles: dict[str, ServiceHandle]) -> None:
    for name, handle in handles.items():
        stub = health_pb2_grpc.HealthStub(handle.channel)
        deadline = time.monotonic() + 30
        while True:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never SERVING")
            await asyncio.sleep(0.05)  # polling the real condition, bounded above


async def checksum_sql(engine: AsyncEngine, schemas: list[str]) -> str:
    """One query: each table of the schemas with its row count and an order-free sum of
    its rows' hashes (any insert, update or delete changes one or the other). The default
    stubs' approval trail is left out (tests/support/four_eyes.TRAIL_TABLES and
    TRAIL_AUDIT_METHODS)."""
    async with engine.connect() as conn:
        tables = (await conn.execute(text(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema = ANY(:s) "
            "AND table_name <> ALL(:trail) ORDER BY 1, 2"),
            {"s": schemas, "trail": list(TRAIL_TABLES)})).all()
    assert tables, schemas
    # The audit events of that filing and approving are the trail too.
    trail = f" WHERE x.method NOT LIKE '{TRAIL_AUDIT_METHODS}'"
    return " UNION ALL ".join(
        f"SELECT '{s}.{t}', count(*), coalesce(sum(hashtextextended(x::text, 0)), 0) "
        f'FROM "{s}"."{t}" x' + (trail if t == "audit_events" else "") for s, t in tables)


async def start_fuzz_stack(pg_url: str) -> FuzzStack:
    billing = await launch("billing", pg_url)
    clearing = await launch(
        "clearing", pg_url, billing_address=billing.address,
        **{**FAST_CLEARING, "pending_fee_worker_enabled": False,
           "reconcile_worker_enabled": False,  # it voids billing's orphan charges by itself
           # clearing waits for billing's answer, so a charge never lands after the call
           "billing_deadline_s": 20.0, "billing_batch_deadline_s": 40.0},
    )
    simulator = await start_simulator(hold_s=2.0)
    settlement = await launch(
        "settlement", pg_url, clearing_address=clearing.address,
        billing_address=billing.address, payout_gateway_address=simulator.address,
        **{**FAST_SETTLEMENT, "dispatcher_enabled": False, "completion_interval_s": 0.0},
    )
    handles = {"billing": billing, "clearing": clearing, "settlement": settlement}
    stack = FuzzStack(handles, simulator)
    stack.checksum_sql = await checksum_sql(billing.engine, [h.schema for h in handles.values()])
    await _wait_serving(handles)
    await seed(stack)
    return stack


async def seed(stack: FuzzStack) -> None:
    """Send every RPC's canonical base once, in descriptor order, so the bases find each
    other's records (the rule the charges match, the payment the refunds name…); the
    list RPCs that answer it OK and change nothing become the liveness probes."""
    for rpc in all_rpcs():
        body = base_request(rpc).SerializeToString()
        answer = await stack.send(rpc, body, "(base)", "canonical base", track_writes=True)
        changed = stack.last_write
        reason = ""
        if answer.error is not None:
            with contextlib.suppress(ValueError):
                status = rpc_status.from_call(answer.error)
                for detail in status.details if status else []:
                    if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                        info = error_details_pb2.ErrorInfo()
                        detail.Unpack(info)
                        reason = " " + info.reason
                    elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                        bad = error_details_pb2.BadRequest()
                        detail.Unpack(bad)
                        reason = " " + ",".join(v.field for v in bad.field_violations)
        stack.seeds[rpc.label] = answer.code.name + reason
        if answer.code == grpc.StatusCode.OK and not changed and rpc.name.startswith("List"):
            stack.probes.setdefault(rpc.service, []).append((rpc, body))


async def stop_fuzz_stack(stack: FuzzStack) -> None:
    await drop(stack.handles["settlement"])
    await stack.simulator.channel.close()
    await stack.simulator.running.stop(None)
    await drop(stack.handles["clearing"])
    await drop(stack.handles["billing"])


def write_summary(summary: dict[str, Any], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    lines = [f"fuzzed contract: {summary['requests']} requests in {summary['seconds']} s "
             f"({summary['examples_per_rpc']} examples per RPC), {len(summary['findings'])} "
             f"distinct findings; codes {summary['codes']}; summary in {path}"]
    for label, row in summary["rpcs"].items():
        codes = ", ".join(f"{c} {n}" for c, n in row["codes"].items())
        lines.append(f"  {label:45} {row['sent']:6}  {codes}")
    return "\n".join(lines)


def render(findings: list[Finding]) -> str:
    return "\n".join(
        f"- {f.service}.{f.rpc} {f.field} = {f.kind}: {f.problem} ({f.code}: {f.message[:120]!r})"
        for f in sorted(findings, key=lambda f: (f.service, f.rpc, f.field, f.kind)))
