"""Reading batches without touching them: GetBatch and ListBatches (operations looking for
claims neither confirmed nor released, and settlement's audit)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from clearhouse.clearing.v1 import clearing_pb2 as pb
from google.protobuf import timestamp_pb2
from sqlalchemy import text

from services.clearing.adapters.repository import list_batches_sql
from services.clearing.bootstrap import MIGRATIONS
from tests.clearing.test_claims import adjust, claim
from tests.support.page_tokens import all_pages, assert_forged_keys_refused, forged
from tests.support.plans import generic_plan_connection
from tests.support.rpc_errors import reason, violated_fields


def batch_ids(page: pb.ListBatchesResponse) -> list[str]:
    return [b.batch_id for b in page.batches]


async def listed(clearing: Any, **filters: Any) -> list[str]:
    """Every batch id a ListBatches with these filters holds, page by page."""
    return await all_pages(clearing.stub.ListBatches, pb.ListBatchesRequest(**filters),
                           batch_ids)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def snapshot(clearing: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """Every row of the batch and detail tables, to show a read changed nothing."""
    async with clearing.engine.connect() as conn:
        tables = []
        for sql in ("SELECT * FROM claim_batches ORDER BY batch_id",
                    "SELECT * FROM claim_batch_totals ORDER BY batch_id",
                    "SELECT * FROM clearing_details ORDER BY detail_id"):
            tables.append([tuple(r) for r in (await conn.execute(text(sql))).all()])
    return tables[0], tables[1], tables[2]


async def five_batches(clearing: Any) -> dict[str, pb.Batch]:
    """Claimed in this order: M1-OPEN (M1 CNY, open, 300), M1-DONE (M1 CNY, confirmed, 50),
    M2-GONE (M2 CNY, released, 400), M1-USD (M1 USD, open, 7), M2-OPEN (M2 CNY, open, the
    400 M2-GONE released)."""
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    await s.ClaimDetails(claim("M1-OPEN"))
    await s.RecordAdjustment(adjust("A2", 50))
    await s.ClaimDetails(claim("M1-DONE"))
    await s.RecordAdjustment(adjust("A3", 400, "M2"))
    await s.ClaimDetails(claim("M2-GONE", "M2"))
    await s.RecordAdjustment(adjust("A4", 7, currency="USD"))
    await s.ClaimDetails(claim("M1-USD", currency="USD"))
    await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="M1-DONE"))
    await s.ReleaseBatch(pb.ReleaseBatchRequest(batch_id="M2-GONE"))
    await s.ClaimDetails(claim("M2-OPEN", "M2"))   # takes A3 again, released by M2-GONE
    return {b.batch_id: b for b in (await s.ListBatches(pb.ListBatchesRequest())).batches}


# ------------------------------------------------------------------ GetBatch


async def test_get_batch_returns_an_open_batch_as_its_claim_answered_it(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    await s.RecordAdjustment(adjust("A2", -100, days=1))
    claimed = (await s.ClaimDetails(claim("B1"))).batch
    got = (await s.GetBatch(pb.GetBatchRequest(batch_id="B1"))).batch
    assert got == claimed
    assert (got.merchant_id, got.state, got.totals.currency_code) == (
        "M1", pb.BATCH_STATE_OPEN, "CNY")
    assert (got.business_date_to.year, got.business_date_to.month,
            got.business_date_to.day) == (2026, 3, 31)
    assert (got.totals.adjustments, got.totals.detail_count) == (200, 2)
    opened = got.create_time.ToDatetime(tzinfo=dt.UTC)
    assert abs(dt.datetime.now(dt.UTC) - opened) < dt.timedelta(minutes=5)
    assert got.update_time == got.create_time   # unchanged since it was opened


async def test_get_batch_shows_a_confirmed_or_released_batch_and_when_it_was_closed(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    await s.RecordAdjustment(adjust("A2", 400, "M2"))
    opened = (await s.ClaimDetails(claim("B1"))).batch
    await s.ClaimDetails(claim("B2", "M2"))
    confirmed = (await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B1"))).batch
    released = (await s.ReleaseBatch(pb.ReleaseBatchRequest(batch_id="B2"))).batch
    got1 = (await s.GetBatch(pb.GetBatchRequest(batch_id="B1"))).batch
    got2 = (await s.GetBatch(pb.GetBatchRequest(batch_id="B2"))).batch
    assert got1 == confirmed and got1.state == pb.BATCH_STATE_CONFIRMED
    assert got2 == released and got2.state == pb.BATCH_STATE_RELEASED
    assert got1.create_time == opened.create_time
    assert got1.update_time.ToDatetime() > got1.create_time.ToDatetime()
    assert got2.update_time.ToDatetime() > got2.create_time.ToDatetime()
    # The totals stay those of the claim, also for the released batch.
    assert (got1.totals.adjustments, got2.totals.adjustments) == (300, 400)
    # A repeat of the close answers with the time of the first close, not a new one.
    again = (await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B1"))).batch
    assert again.update_time == confirmed.update_time


async def test_get_batch_of_an_unknown_id_is_not_found_and_claims_nothing(clearing):
    s = clearing.stub
    await s.RecordAdjustment(adjust("A1", 300))
    before = await snapshot(clearing)
    err = await refused(s.GetBatch(pb.GetBatchRequest(batch_id="NOPE")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert reason(err) == "BATCH_NOT_FOUND"
    assert await snapshot(clearing) == before
    detail = (await s.GetDetail(pb.GetDetailRequest(detail_id="A1"))).detail
    assert (detail.state, detail.batch_id) == (pb.DETAIL_STATE_UNSETTLED, "")


@pytest.mark.parametrize("batch_id", ["", "B" * 65])
async def test_get_batch_refuses_a_missing_or_overlong_id_as_a_field_violation(
    clearing, batch_id
):
    err = await refused(clearing.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"batch_id"}


# ------------------------------------------------------------------ ListBatches


async def test_list_batches_filters_by_state_merchant_currency_and_creation_time(clearing):
    batches = await five_batches(clearing)
    everything = ["M1-OPEN", "M1-DONE", "M2-GONE", "M1-USD", "M2-OPEN"]
    assert await listed(clearing) == everything          # oldest first
    assert await listed(clearing, state=pb.BATCH_STATE_OPEN) == [
        "M1-OPEN", "M1-USD", "M2-OPEN"]
    assert await listed(clearing, state=pb.BATCH_STATE_CONFIRMED) == ["M1-DONE"]
    assert await listed(clearing, state=pb.BATCH_STATE_RELEASED) == ["M2-GONE"]
    assert await listed(clearing, merchant_id="M2") == ["M2-GONE", "M2-OPEN"]
    assert await listed(clearing, currency_code="USD") == ["M1-USD"]
    assert await listed(clearing, merchant_id="M1", currency_code="CNY",
                        state=pb.BATCH_STATE_OPEN) == ["M1-OPEN"]
    assert await listed(clearing, merchant_id="M3") == []
    # Strictly before: the batch created at that moment is not listed.
    cut = batches["M1-USD"].create_time
    assert await listed(clearing, created_before=cut) == ["M1-OPEN", "M1-DONE", "M2-GONE"]
    assert await listed(clearing, created_before=cut, state=pb.BATCH_STATE_OPEN) == [
        "M1-OPEN"]
    assert await listed(clearing, created_before=timestamp_pb2.Timestamp(seconds=0)) == []
    # What is listed is the batch as GetBatch shows it.
    for batch_id, batch in batches.items():
        assert (await clearing.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id))
                ).batch == batch
    assert batches["M1-DONE"].state == pb.BATCH_STATE_CONFIRMED
    assert (batches["M2-GONE"].totals.adjustments, batches["M2-OPEN"].totals.adjustments) == (
        400, 400)


async def test_list_batches_pages_without_holes_or_repeats_even_when_batches_share_a_moment(
    clearing
):
    s = clearing.stub
    for i in range(7):
        await s.ClaimDetails(claim(f"B{i}", "M1" if i % 3 else "M2"))
    await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="B4"))
    # B2, B3 and B5 opened at the same microsecond (concurrent claims can): the page key
    # goes on by batch id within one moment.
    async with clearing.engine.begin() as conn:
        await conn.execute(text(
            "UPDATE claim_batches SET create_time = (SELECT create_time FROM claim_batches "
            "WHERE batch_id = 'B2') WHERE batch_id IN ('B3', 'B5')"))
    order = ["B0", "B1", "B2", "B3", "B5", "B4", "B6"]
    assert await listed(clearing, page_size=1000) == order
    for size in (1, 2):
        assert await listed(clearing, page_size=size) == order
        assert await listed(clearing, page_size=size, state=pb.BATCH_STATE_OPEN) == [
            b for b in order if b != "B4"]
        assert await listed(clearing, page_size=size, merchant_id="M1") == [
            "B1", "B2", "B5", "B4"]
    first = await s.ListBatches(pb.ListBatchesRequest(page_size=3))
    assert batch_ids(first) == order[:3] and first.next_page_token
    last = await s.ListBatches(pb.ListBatchesRequest(page_size=7))
    assert batch_ids(last) == order and last.next_page_token == ""


# A ListBatches key is (create_time as ISO 8601 with offset, batch id).
FORGED_KEYS = [
    [], ["B1"], ["2026-03-02T04:00:00+00:00"], ["2026-03-02T04:00:00+00:00", "B1", "x"],
    ["nope", "B1"], ["2026-02-30T04:00:00+00:00", "B1"], [1772424000, "B1"],
    ["2026-03-02T04:00:00", "B1"],                  # no offset: which moment?
    ["0001-01-01T00:00:00+01:00", "B1"],            # before year 1 in UTC
    ["2026-03-02T04:00:00+00:00", 5], ["2026-03-02T04:00:00+00:00", None],
    ["2026-03-02T04:00:00+00:00", "x\u0000"], ["2026-03-02T04:00:00+00:00", "\ud800"],
]


async def test_a_forged_or_foreign_page_token_is_invalid_argument(clearing):
    s = clearing.stub
    for i in range(3):
        await s.ClaimDetails(claim(f"B{i}"))
    await assert_forged_keys_refused(
        "ListBatches", s.ListBatches, pb.ListBatchesRequest(page_size=1), FORGED_KEYS,
        batch_ids)
    await assert_forged_keys_refused(
        "ListBatches OPEN of M1", s.ListBatches,
        pb.ListBatchesRequest(page_size=1, merchant_id="M1", state=pb.BATCH_STATE_OPEN),
        FORGED_KEYS, batch_ids)
    token = (await s.ListBatches(pb.ListBatchesRequest(page_size=1))).next_page_token
    # A genuine key in a token of other filters, and a token of the state filter used
    # without it: both refused, not served as a wrong page.
    for request in (pb.ListBatchesRequest(page_size=1, merchant_id="M1", page_token=token),
                    pb.ListBatchesRequest(page_size=1, state=pb.BATCH_STATE_OPEN,
                                          page_token=token),
                    pb.ListBatchesRequest(page_size=1, page_token="not base64 json")):
        err = await refused(s.ListBatches(request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {"page_token"}
    # A genuine key with a far-off (but well-formed) moment is simply past the end.
    late = forged(token, ["9999-12-31T00:00:00+00:00", "B0"])
    assert batch_ids(await s.ListBatches(pb.ListBatchesRequest(page_size=1,
                                                               page_token=late))) == []


async def test_invalid_list_filters_are_refused_together_as_field_violations(clearing):
    s = clearing.stub
    await s.ClaimDetails(claim("B1"))
    before = await snapshot(clearing)
    err = await refused(s.ListBatches(pb.ListBatchesRequest(
        merchant_id="M" * 65, currency_code="XXX", state=99,
        created_before=timestamp_pb2.Timestamp(seconds=10**12), page_size=-1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {
        "merchant_id", "currency_code", "state", "created_before", "page_size"}
    err = await refused(s.ListBatches(pb.ListBatchesRequest(
        created_before=timestamp_pb2.Timestamp(seconds=0, nanos=-1))))
    assert violated_fields(err) == {"created_before"}
    # Lowercase is not an ISO 4217 code either.
    err = await refused(s.ListBatches(pb.ListBatchesRequest(currency_code="cny")))
    assert violated_fields(err) == {"currency_code"}
    assert await snapshot(clearing) == before


async def test_reads_of_batches_change_nothing(clearing):
    await five_batches(clearing)
    s = clearing.stub
    before = await snapshot(clearing)
    for batch_id in ("M1-OPEN", "M1-DONE", "M2-GONE", "NOPE"):
        try:
            await s.GetBatch(pb.GetBatchRequest(batch_id=batch_id))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
    for state in (0, pb.BATCH_STATE_OPEN, pb.BATCH_STATE_RELEASED):
        await listed(clearing, state=state, page_size=1)
    await s.ListBatchDetails(pb.ListBatchDetailsRequest(batch_id="M1-OPEN"))
    assert await snapshot(clearing) == before
    # The open batch can still be confirmed, and its details are settled by it.
    await s.ConfirmBatch(pb.ConfirmBatchRequest(batch_id="M1-OPEN"))
    a1 = (await s.GetDetail(pb.GetDetailRequest(detail_id="A1"))).detail
    assert (a1.state, a1.batch_id) == (pb.DETAIL_STATE_SETTLED, "M1-OPEN")


# ------------------------------------------------------------------ plans

_FILL = """
WITH b AS (
    INSERT INTO claim_batches (batch_id, merchant_id, currency, business_date_to, state,
                               create_time, update_time)
    SELECT 'B' || g, 'M' || (g % 200), 'CNY', DATE '2026-03-01',
           CASE WHEN g % 100 = 0 THEN 'OPEN' ELSE 'CONFIRMED' END,
           TIMESTAMPTZ '2026-03-01 00:00Z' + g * INTERVAL '1 second',
           TIMESTAMPTZ '2026-03-01 00:00Z' + g * INTERVAL '1 second'
    FROM generate_series(1, $1) AS g
    RETURNING batch_id
)
INSERT INTO claim_batch_totals SELECT batch_id, 0, 0, 0, 0, 0, 0, 0, 0, 0 FROM b
"""

# (filters, the indexes a page may be read from, whether it must come in index order)
PLANS = [
    (dict(state="OPEN"), {"claim_batches_open_idx"}, True),
    (dict(state="OPEN", created_before=True, after=True), {"claim_batches_open_idx"}, True),
    (dict(merchant=True), {"claim_batches_merchant_idx"}, True),
    (dict(merchant=True, currency=True, after=True), {"claim_batches_merchant_idx"}, True),
    # A merchant's OPEN batches are few (a claim is confirmed or released within its
    # settlement run): PostgreSQL may combine both indexes and sort that handful.
    (dict(merchant=True, state="OPEN"),
     {"claim_batches_merchant_idx", "claim_batches_open_idx"}, False),
    (dict(), {"claim_batches_create_idx"}, True),
    (dict(state="CONFIRMED", after=True), {"claim_batches_create_idx"}, True),
]


@pytest.mark.parametrize(("filters", "indexes", "in_index_order"), PLANS)
async def test_a_page_of_batches_is_read_from_an_index_with_the_generic_plan(
    pg_url, filters, indexes, in_index_order
):
    sql, names = list_batches_sql(**{"merchant": False, "currency": False, "state": "",
                                     "created_before": False, "after": False, **filters})
    values = {"merchant_id": "'M100'", "currency": "'CNY'",
              "created_before": "'2026-03-02 00:00Z'", "after_time": "'2026-03-01 00:10Z'",
              "after_id": "'B600'", "limit": "101"}
    async with generic_plan_connection(pg_url, MIGRATIONS) as conn:
        await conn.execute(_FILL, 20_000)
        await conn.execute("ANALYZE claim_batches; ANALYZE claim_batch_totals")
        await conn.execute(f"PREPARE page AS {sql}")
        plan = "\n".join(r[0] for r in await conn.fetch(
            f"EXPLAIN EXECUTE page({', '.join(values[n] for n in names)})"))
        rows = await conn.fetch(f"EXECUTE page({', '.join(values[n] for n in names)})")
    assert "Seq Scan on claim_batches" not in plan, plan
    if in_index_order:
        assert "Sort Key" not in plan, plan
    assert any(index in plan for index in indexes), plan
    keys = [(r["create_time"], r["batch_id"]) for r in rows]
    assert 0 < len(keys) <= 101 and keys == sorted(keys)
