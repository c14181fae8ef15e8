"""Each service exports its RPC and business figures on a metrics port of its own, and
they move when the work happens. Scraped over HTTP from real servers."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from clearhouse.billing.v1 import billing_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from shared import server
from shared.security import ServerSecurity
from tests.clearing.conftest import FAST, payment, percent_rule, record
from tests.support.harness import ServiceHandle, drop, launch

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def scrape(handle: ServiceHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = handle.running.metrics_server.port  # type: ignore[union-attr]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def families(handle: ServiceHandle) -> set[str]:
    """The metric families a service exports (also those with no sample yet)."""
    port = handle.running.metrics_server.port  # type: ignore[union-attr]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    names = set()
    for family in text_string_to_metric_families(body):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names |= {family.name, *(s.name for s in family.samples)}
        names |= {family.name + x for x in suffixes.get(family.type, ())}
    return names


def value(figures, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return figures.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def clearing(pg_url: str, billing: ServiceHandle):  # type: ignore[no-untyped-def]
    handle = await launch("clearing", pg_url, billing_address=billing.address, **FAST)
    yield handle
    await drop(handle)


async def test_rpc_counts_and_latency_move_with_calls_and_their_codes(billing, clearing):
    method = dict(grpc_type="unary", grpc_service="clearhouse.clearing.v1.ClearingService",
                  grpc_method="RecordTransaction")
    before = await asyncio.to_thread(scrape, clearing)
    await percent_rule(billing, "R1", "0.01")
    await record(clearing, payment("T1", 10_000))
    with pytest.raises(grpc.aio.AioRpcError):
        await record(clearing, payment("", 10_000))
    after = await asyncio.to_thread(scrape, clearing)
    for code, delta in (("OK", 1), ("INVALID_ARGUMENT", 1)):
        name = "grpc_server_handled_total"
        assert value(after, name, grpc_code=code, **method) - value(
            before, name, grpc_code=code, **method) == delta
    assert value(after, "grpc_server_started_total", **method) - value(
        before, "grpc_server_started_total", **method) == 2
    assert value(after, "grpc_server_handling_seconds_count", **method) == 2
    # clearing called billing once for the fee: billing counted it too.
    charged = await asyncio.to_thread(scrape, billing)
    assert value(charged, "grpc_server_handled_total", grpc_type="unary",
                 grpc_service="clearhouse.billing.v1.BillingService",
                 grpc_method="BatchChargeFees", grpc_code="OK") + value(
        charged, "grpc_server_handled_total", grpc_type="unary",
        grpc_service="clearhouse.billing.v1.BillingService", grpc_method="ChargeFee",
        grpc_code="OK") == 1


async def test_the_group_size_histogram_counts_every_unary_call_in_its_group(pg_url, billing):
    """Concurrent unary calls share groups (group commit): the histogram's sum is the
    calls, its count the groups, and there were fewer groups than calls. The group's
    window is widened to 50 ms here (1 ms by default) so that calls issued together
    share a group even on a loaded machine, where grpc may accept them a few ms apart."""
    await percent_rule(billing, "R1", "0.01")
    clearing = await launch("clearing", pg_url, billing_address=billing.address,
                            **{**FAST, "unary_batch_window_s": 0.05})
    try:
        calls = 12
        before = await asyncio.to_thread(scrape, clearing)
        await asyncio.gather(*(record(clearing, payment(f"G{i}", 1_000 + i))
                               for i in range(calls)))
        after = await asyncio.to_thread(scrape, clearing)
    finally:
        await drop(clearing)
    name = "clearhouse_clearing_unary_group_size"
    grouped = value(after, f"{name}_sum", kind="RecordTransaction") - value(
        before, f"{name}_sum", kind="RecordTransaction")
    groups = value(after, f"{name}_count", kind="RecordTransaction") - value(
        before, f"{name}_count", kind="RecordTransaction")
    assert grouped == calls
    assert 1 <= groups < calls
    # ChargeFee called directly is grouped in billing the same way.
    from tests.billing.support import txn

    await asyncio.gather(*(billing.stub.ChargeFee(billing_pb2.ChargeFeeRequest(
        transaction=txn(f"C{i}", 1_000 + i))) for i in range(calls)))
    fees = await asyncio.to_thread(scrape, billing)
    assert value(fees, "clearhouse_billing_unary_group_size_sum", kind="ChargeFee") == calls


async def test_business_figures_follow_the_database(billing, clearing):
    await percent_rule(billing, "R1", "0.01")
    await clearing.running.app.metrics.refresh()  # type: ignore[union-attr]
    empty = await asyncio.to_thread(scrape, clearing)
    labels = dict(type="PAYMENT", state="UNSETTLED", currency="CNY")
    assert value(empty, "clearhouse_clearing_details", **labels) == 0
    await record(clearing, payment("T1", 10_000))
    await record(clearing, payment("T2", 2_500))
    await clearing.running.app.metrics.refresh()  # type: ignore[union-attr]
    await billing.running.app.metrics.refresh()  # type: ignore[union-attr]
    figures = await asyncio.to_thread(scrape, clearing)
    assert value(figures, "clearhouse_clearing_details", **labels) == 2
    assert value(figures, "clearhouse_clearing_detail_amount_minor_units", **labels) == 12_500
    assert value(figures, "clearhouse_clearing_unsettled_details") == 2
    assert value(figures, "clearhouse_clearing_pending_fees") == 0
    assert value(figures, "clearhouse_clearing_figures_refreshed_timestamp_seconds") > 0
    assert value(figures, "clearhouse_clearing_db_pool_max_connections", pool="asyncpg") > 0
    fees = await asyncio.to_thread(scrape, billing)
    assert value(fees, "clearhouse_billing_fee_charges", mode="NET", currency="CNY") == 2
    assert value(fees, "clearhouse_billing_fee_charged_minor_units", mode="NET",
                 currency="CNY") == 100 + 25


async def test_a_prepaid_refusal_is_counted_on_billings_port(billing):
    from clearhouse.type.v1 import transaction_pb2

    from tests.billing.support import txn

    await percent_rule(billing, "PP", "0.01", mode=transaction_pb2.COLLECTION_MODE_PREPAID)
    with pytest.raises(grpc.aio.AioRpcError):
        await billing.stub.ChargeFee(billing_pb2.ChargeFeeRequest(transaction=txn("T1", 10_000)))
    figures = await asyncio.to_thread(scrape, billing)
    assert value(figures, "clearhouse_billing_fee_account_insufficient_refusals_total") == 1


async def test_liveness_stays_serving_when_readiness_does_not(pg_url):
    async def not_ready() -> bool:
        return False

    app = server.App(name="probe", error_domain="probe", servicers=[],
                     service_names=["probe.v1.Probe"], readiness=not_ready,
                     security=ServerSecurity.insecure())
    running = await server.start(app)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            live = await health.Check(health_pb2.HealthCheckRequest(service=server.LIVENESS))
            ready = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert live.status == health_pb2.HealthCheckResponse.SERVING
        assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await running.stop(None)


async def test_settlement_exports_payouts_runs_and_the_invariant_check_of_its_books(pg_url):
    from sqlalchemy import text

    settlement = await launch("settlement", pg_url, invariant_check_interval_s=0.001,
                              scheduler_enabled=False, dispatcher_enabled=False)
    try:
        metrics = settlement.running.app.metrics
        await metrics.refresh()  # type: ignore[union-attr]
        clean = await asyncio.to_thread(scrape, settlement)
        assert ("clearhouse_settlement_invariant_violations", ()) in clean
        assert value(clean, "clearhouse_settlement_invariant_violations") == 0
        assert ("clearhouse_settlement_run_items", (("state", "FAILED"),)) in clean
        # A journal entry with no postings breaks "entries balance": the gauge says so.
        async with settlement.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO journal_entries (entry_id, entry_type, reference) "
                "VALUES ('E-broken', 'SETTLEMENT', 'test')"))
        await metrics.refresh()  # type: ignore[union-attr]
        broken = await asyncio.to_thread(scrape, settlement)
        assert value(broken, "clearhouse_settlement_invariant_violations") == 1
        assert value(broken, "clearhouse_settlement_invariant_violations_by_invariant",
                     invariant="3 entries balance") == 1
    finally:
        await drop(settlement)


async def test_an_issued_fee_bill_is_owed_and_ages_until_it_is_collected(billing):
    """What DEFERRED fees wait in: the bill's amount is outstanding and its age grows
    from its issue until it is marked collected; then both drop to 0."""
    from tests.billing.support import create_rule, txn

    stub = billing.stub
    await stub.CreateFeeRule(create_rule({
        "rule_id": "DEF", "currency": "CNY", "method": "PERCENT", "rate": "0.0038",
        "effective_from": "2026-01-01T00:00:00+08:00", "selectors": {},
        "collection_mode": "DEFERRED", "refund_fee_policy": "PROPORTIONAL"}))
    for i, amount in enumerate((10_000, 25_000)):  # fees 38 and 95
        await stub.ChargeFee(billing_pb2.ChargeFeeRequest(
            transaction=txn(f"D{i}", amount, time="2026-02-10T10:00:00+08:00")))

    async def figures() -> dict:  # type: ignore[type-arg]
        await billing.running.app.metrics.refresh()  # type: ignore[union-attr]
        return await asyncio.to_thread(scrape, billing)

    before = await figures()
    assert value(before, "clearhouse_billing_oldest_issued_fee_bill_age_seconds") == 0
    [bill] = (await stub.GenerateFeeBills(billing_pb2.GenerateFeeBillsRequest(
        month="2026-02"))).bills
    await asyncio.sleep(0.05)
    owed = await figures()
    assert value(owed, "clearhouse_billing_fee_bills_outstanding_minor_units",
                 currency="CNY") == 38 + 95
    assert value(owed, "clearhouse_billing_oldest_issued_fee_bill_age_seconds") > 0
    await stub.MarkFeeBillCollected(billing_pb2.MarkFeeBillCollectedRequest(
        request_id="collect-1", bill_id=bill.bill_id, collection_reference="BANK-1"))
    paid = await figures()
    assert value(paid, "clearhouse_billing_fee_bills_outstanding_minor_units",
                 currency="CNY") == 0
    assert value(paid, "clearhouse_billing_oldest_issued_fee_bill_age_seconds") == 0
    assert value(paid, "clearhouse_billing_fee_bills", state="COLLECTED") == 1


# A figure's full name in prose: `clearhouse_<service>_…` stands for each of the three.
DOC_FIGURE = re.compile(r"\b((?:clearhouse_(?:<service>_)?|grpc_server_)[a-z_]*[a-z])(?![a-z_])")


def documented_figures() -> set[str]:
    """The figures README.md and docs/*.md name in full (`…_suffix` shorthands aside)."""
    named = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for name in DOC_FIGURE.findall(doc.read_text()):
            if "<service>" in name:
                named |= {name.replace("<service>", s) for s in ("billing", "clearing",
                                                                 "settlement")}
            else:
                named.add(name)
    return named


async def test_every_figure_the_alerts_the_dashboard_and_the_docs_use_is_exported(
    pg_url, billing
):
    """The example alert rules, the Grafana dashboard and the documents name only figures
    a service really exports (so an alert cannot silently watch nothing, and an operator
    does not look for a figure that is not there)."""
    used = set(re.findall(r"\b((?:clearhouse|grpc_server)_[a-z_]+)",
                          (DEPLOY / "prometheus" / "alerts.yaml").read_text()))
    dashboard = json.loads((DEPLOY / "grafana" / "clearhouse-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b((?:clearhouse|grpc_server)_[a-z_]+)", target["expr"]))
    used |= documented_figures()
    clearing = await launch("clearing", pg_url, billing_address=billing.address, **FAST)
    settlement = await launch("settlement", pg_url, scheduler_enabled=False,
                              dispatcher_enabled=False)
    try:
        exported: set[str] = set()
        for handle in (billing, clearing, settlement):
            await handle.running.app.metrics.refresh()  # type: ignore[union-attr]
            names = await asyncio.to_thread(families, handle)
            exported |= names | {n.removesuffix("_bucket") for n in names}
        assert used, "no figure found in the alerts and the dashboard"
        assert used - exported == set()
    finally:
        await drop(clearing)
        await drop(settlement)


async def test_metrics_disabled_means_no_endpoint_and_no_refresh(pg_url):
    handle = await launch("billing", pg_url, metrics_enabled=False)
    try:
        assert handle.running.app.metrics is None
        assert handle.running.metrics_server is None
        assert not [t for t in handle.running.tasks if t.get_name().endswith("-figures")]
    finally:
        await drop(handle)
