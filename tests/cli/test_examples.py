"""docs/examples stay working: the Python examples run against the real stack, and every
grpcurl request body parses into its request message (json_format, as grpcurl does) and
is answered by the real services when sent in order."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path

from clearhouse.billing.v1 import billing_pb2
from clearhouse.clearing.v1 import clearing_pb2
from clearhouse.settlement.v1 import settlement_pb2
from google.protobuf import json_format

from tests.cli.conftest import Cli
from tests.support import security

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SERVICES = {
    "billing": (billing_pb2, "clearhouse.billing.v1.BillingService", 50051),
    "clearing": (clearing_pb2, "clearhouse.clearing.v1.ClearingService", 50052),
    "settlement": (settlement_pb2, "clearhouse.settlement.v1.SettlementService", 50053),
}
BODY = re.compile(r"^(\d\d)-(billing|clearing|settlement)-([A-Za-z]+)\.json$")


def bodies() -> list[tuple[str, str, Path]]:
    found = []
    for path in sorted((EXAMPLES / "grpcurl").glob("*.json")):
        match = BODY.match(path.name)
        assert match, f"{path.name}: name it NN-service-Rpc.json"
        found.append((match[2], match[3], path))
    return found


def request_of(service: str, rpc: str, path: Path):
    module, full, _ = SERVICES[service]
    method = module.DESCRIPTOR.services_by_name[full.rsplit(".", 1)[1]].methods_by_name[rpc]
    message = getattr(module, method.input_type.name)()
    json_format.Parse(path.read_text(), message)  # refuses unknown fields, like grpcurl
    return message


def grpcurl_line(service: str, rpc: str, path: Path) -> str:
    _, full, port = SERVICES[service]
    # Recording is the transaction core's permission; everything else an admin's.
    who = "$AS_CORE" if rpc in ("RecordTransaction", "BatchRecordTransactions") else "$AS_ADMIN"
    return (f'grpcurl $TLS -H "{who}" -d @ 127.0.0.1:{port} {full}/{rpc} '
            f"< docs/examples/grpcurl/{path.name}")


def test_the_examples_readme_shows_every_grpcurl_request():
    readme = (EXAMPLES / "README.md").read_text()
    assert len(bodies()) >= 30
    for service, rpc, path in bodies():
        assert grpcurl_line(service, rpc, path) in readme, path.name


async def test_every_grpcurl_body_parses_and_is_answered_in_order(cli: Cli):
    stubs = {"billing": cli.stack.billing.stub, "clearing": cli.stack.clearing.stub,
             "settlement": cli.stack.settlement.stub}
    answers = {}
    for service, rpc, path in bodies():
        request = request_of(service, rpc, path)
        answers[rpc] = await getattr(stubs[service], rpc)(request)
    run = answers["RunSettlement"].run
    assert run.settlement_count >= 1 and run.failed_item_count == 0
    st = answers["GetSettlement"].settlement
    # 200.00 + 50.00 − 50.00 refund − NET fees (1.20 + 0.30 − 0.30 returned) − 3.00.
    assert (st.merchant_id, st.net) == ("EX-G", 19580)
    assert "ex-g-refund-1" in answers["ExportStatement"].content.decode()
    assert answers["GetMerchantBalance"].balances[0].settled == 19580
    assert list(answers["CheckInvariants"].violations) == []
    changed = answers["UpdateSettlementProfile"].profile
    assert (changed.min_payout, changed.version, changed.cycle.days) == (500, 2, 1)
    versions = answers["ListSettlementProfileVersions"].versions
    assert [(v.profile.version, list(v.changed_fields)) for v in versions] == [
        (2, ["min_payout"]), (1, [])]


async def test_the_python_examples_run_against_the_real_services(cli: Cli, monkeypatch):
    monkeypatch.setenv("CLEARHOUSE_SECURITY_DIR", str(security.pki().folder))
    spec = importlib.util.spec_from_file_location("everyday", EXAMPLES / "python" / "everyday.py")
    assert spec and spec.loader
    everyday = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(everyday)
    s = cli.stack
    args = (s.billing.address, s.clearing.address, s.settlement.address)
    got = await asyncio.to_thread(everyday.main, *args)
    assert set(got) >= {"CreateFeeRule", "RecordTransaction", "RunSettlement",
                        "ExportStatement", "CheckInvariants", "GetMerchantBalance"}
    assert got["GetSettlement"].net == 19580 and got["GetSettlement"].merchant_id == "EX-PY"
    assert "ex-py-refund-1" in got["ExportStatement"]
    assert got["CheckInvariants"] == []
    assert got["QuoteRefundFee"].fee_returned.minor_units == 6  # 1.20 × 10 / 200
    # Every call is idempotent: running the examples again changes nothing.
    again = await asyncio.to_thread(everyday.main, *args)
    assert again["GetSettlement"] == got["GetSettlement"]
    assert again["GetFeeAccount"].balance.minor_units == 50000
