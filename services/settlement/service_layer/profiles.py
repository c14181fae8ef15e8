"""Use cases of settlement profiles: create, read, change by field mask and etag, and
the history of versions (SQL in adapters/profile_repo)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from services.settlement.adapters import destinations, profile_repo
from services.settlement.adapters.profile_repo import Version
from services.settlement.domain.profiles import (
    Profile,
    changed_fields,
    destination_changed,
    merge,
    validate,
)
from services.settlement.service_layer.unit_of_work import Database
from shared import approvals, audit, idempotency
from shared.clock import real_now
from shared.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from shared.pagination import Page, integer
from shared.pagination import text as text_key
from shared.request_context import current_caller, current_request_id

UPDATE_SCOPE = "profile-update"
AUDIT_TYPE = "settlement_profile"


def _audited(p: Profile) -> dict[str, object]:
    """What the audit trail keeps of a profile (the account number masked by audit)."""
    bank = p.bank_account
    return {
        "version": p.version, "currency_code": p.currency,
        "cycle": str(p.cycle) if p.cycle else "",
        "destination_type": p.destination.value if p.destination else "",
        "bank_account": {"account_name": bank.account_name,
                         "account_number": bank.account_number,
                         "bank_name": bank.bank_name, "branch_code": bank.branch_code}
        if bank else None,
        "min_payout": p.min_payout, "deduct_fee_bills": p.deduct_fee_bills,
        "hold": p.hold, "hold_reason": p.hold_reason,
    }


def _not_found(merchant_id: str) -> NotFound:
    return NotFound("PROFILE_NOT_FOUND", f"no settlement profile for {merchant_id!r}",
                    {"merchant_id": merchant_id})


async def load(conn: AsyncConnection, merchant_id: str, *, lock: bool = False) -> Profile:
    """The merchant's current profile, or PROFILE_NOT_FOUND."""
    found = await profile_repo.get(conn, merchant_id, lock=lock)
    if found is None:
        raise _not_found(merchant_id)
    return found


def _actor() -> str:
    caller = current_caller.get()
    return caller.name if caller is not None else ""


class ProfileService:
    def __init__(self, db: Database, now: Callable[[], dt.datetime] = real_now) -> None:
        self.db = db
        # The service clock: a destination change is stamped with it, and the payout
        # dispatcher measures the cool-off with the same clock.
        self.now = now

    async def create(self, p: Profile) -> Profile:
        validate(p)
        async with self.db.engine.begin() as conn:
            created = await profile_repo.insert(conn, p, _actor(), current_request_id.get())
            if created is None:
                existing = await load(conn, p.merchant_id)
                if profile_repo.same_content(existing, p):
                    audit.replayed()
                    return existing  # a retried create of the same profile
                raise AlreadyExists("PROFILE_EXISTS", f"{p.merchant_id!r} already has a profile",
                                    {"merchant_id": p.merchant_id})
            await audit.record(conn, object_type=AUDIT_TYPE, object_id=p.merchant_id,
                               before=None, after=_audited(created))
            return created

    async def get(self, merchant_id: str) -> Profile:
        async with self.db.engine.connect() as conn:
            return await load(conn, merchant_id)

    async def update(
        self, given: Profile, paths: set[str], etag: str, request_id: str
    ) -> Profile:
        """Sets the fields named by `paths` (API names, or "*") from `given` on the
        version `etag` names, as one new version. A replay of `request_id` answers the
        version the first call made; nothing changes when the etag is stale, the result
        is invalid or the currency would change."""
        merchant_id = given.merchant_id
        request_hash = idempotency.fingerprint(merchant_id, sorted(paths), repr(given), etag)
        async with self.db.engine.begin() as conn:
            owned, stored = await idempotency.begin(conn, UPDATE_SCOPE, request_id, request_hash)
            if not owned and stored is not None:
                replayed = await profile_repo.version(conn, merchant_id, int(stored.decode()))
                assert replayed is not None  # versions are never deleted
                audit.replayed()
                return replayed
            current = await load(conn, merchant_id, lock=True)
            if etag != current.etag:
                raise Aborted(
                    "ETAG_MISMATCH",
                    f"the profile of {merchant_id!r} changed since it was read (now "
                    f"{current.etag}, sent {etag[:64]!r}): read it again and decide again",
                    {"merchant_id": merchant_id, "etag": current.etag},
                )
            merged = merge(current, given, paths)
            validate(merged)
            if merged.currency != current.currency:
                # The merchant's payable balance, carried amount and claimed batches are
                # in the old currency; a run in the new one would strand them.
                raise FailedPrecondition(
                    "PROFILE_CURRENCY_IMMUTABLE",
                    f"the profile of {merchant_id!r} settles {current.currency}; its currency "
                    "cannot change (settle another currency under a new merchant id)",
                    {"merchant_id": merchant_id, "currency_code": current.currency},
                )
            moved = destination_changed(current, merged)
            # Four eyes (permissions.FOUR_EYES) again under the profile's lock: the
            # interceptor's check and an approval's preview read the profile before this
            # transaction, and an update committed since (at the version this one names)
            # can make this one a redirect, or move the "before" its decider saw.
            approvals.check_locked("UpdateSettlementProfile", needs_eyes=moved,
                                   basis=destinations.basis(destinations.of_profile(current)))
            changed = changed_fields(current, merged)
            result = current
            if changed:
                result = await profile_repo.update(
                    conn, merged, version=current.version,
                    destination_change_time=self.now() if moved
                    else current.destination_change_time,
                    changed=changed, actor=_actor(), request_id=request_id,
                )
            await idempotency.finish(conn, UPDATE_SCOPE, request_id, str(result.version).encode())
            # In the same transaction (an unchanged profile too: the attempt is the record).
            await audit.record(conn, object_type=AUDIT_TYPE, object_id=merchant_id,
                               before=_audited(current), after=_audited(result))
        return result

    async def list(self, page_size: int, token: str) -> tuple[list[Profile], str]:
        page = Page.of(page_size, token, {"list": "profiles"}, key=(text_key,))
        after = page.after[0] if page.after else ""
        async with self.db.engine.connect() as conn:
            profiles = await profile_repo.page(conn, after, page.size + 1)
        nxt = page.next_token(profiles, lambda p: [p.merchant_id], {"list": "profiles"})
        return profiles[: page.size], nxt

    async def versions(
        self, merchant_id: str, page_size: int, token: str
    ) -> tuple[Sequence[Version], str]:
        filters = {"list": "profile_versions", "merchant_id": merchant_id}
        page = Page.of(page_size, token, filters, key=(integer,))
        before = page.after[0] if page.after else None
        async with self.db.engine.connect() as conn:
            if await profile_repo.get(conn, merchant_id) is None:
                raise _not_found(merchant_id)
            found = await profile_repo.versions(conn, merchant_id, before, page.size + 1)
        nxt = page.next_token(found, lambda v: [v.profile.version], filters)
        return found[: page.size], nxt
