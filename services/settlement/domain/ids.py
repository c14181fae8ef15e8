"""Deterministic ids: a retried or crashed run must find the same batch, settlement and
payout again, so ids derive from the run date and the merchant."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection

_MAX_ID = 64


def _merchant_part(merchant_id: str, room: int) -> str:
    if len(merchant_id) <= room and merchant_id.isascii():
        return merchant_id
    return hashlib.sha256(merchant_id.encode()).hexdigest()[:room]


def batch_id(settle_date: dt.date, merchant_id: str) -> str:
    prefix = f"stl-{settle_date:%Y%m%d}-"
    return prefix + _merchant_part(merchant_id, _MAX_ID - len(prefix))


def settlement_id(settle_date: dt.date, merchant_id: str) -> str:
    prefix = f"st-{settle_date:%Y%m%d}-"
    return prefix + _merchant_part(merchant_id, _MAX_ID - len(prefix))


def run_id(settle_date: dt.date) -> str:
    return f"run-{settle_date:%Y%m%d}"


def payout_id(settlement: str) -> str:
    return f"po-{settlement}"


def retry_id(root: str, taken: Collection[str]) -> str:
    """The id of a new retry in the chain that starts with payout `root`: the first
    `<root>-retryN` no payout holds (another merchant's payout may: ids derive from
    merchant ids, and "M-retry1" is a merchant id as good as "M")."""
    n = 1
    while f"{root}-retry{n}" in taken:
        n += 1
    return f"{root}-retry{n}"
