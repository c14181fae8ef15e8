"""A merchant's balances per currency (payable, carried, in flight, paid, settled), read
in one snapshot so that settled = paid + in flight + payable holds in every answer."""

from __future__ import annotations

from dataclasses import dataclass

from services.settlement.adapters import balance_repo, ledger_repo
from services.settlement.domain.ledger import AccountType, account
from services.settlement.service_layer.unit_of_work import Database


@dataclass(frozen=True, slots=True)
class MerchantBalance:
    currency: str
    payable: int  # owed to the merchant (credits shown positive)
    carried: int
    in_flight: int
    paid: int
    settled: int
    settlement_count: int


class BalanceService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def merchant(self, merchant_id: str, currency: str = "") -> list[MerchantBalance]:
        """One balance per currency, by currency code: the one asked for (zeros when
        nothing was booked in it), or every currency the merchant has settlements or
        payouts in, or its profile's currency, or none for a merchant unknown here."""
        async with self.db.engine.connect() as conn:
            # One snapshot for the three reads: a run booking meanwhile is seen whole or
            # not at all.
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                settled = await balance_repo.settled(conn, merchant_id)
                paid = await balance_repo.payouts(conn, merchant_id)
                if currency:
                    currencies = [currency]
                else:
                    known = set(settled) | set(paid)
                    if not known:
                        profile = await balance_repo.profile_currency(conn, merchant_id)
                        known = {profile} if profile else set()
                    currencies = sorted(known)
                codes = {
                    c: account(AccountType.MERCHANT_PAYABLE, c, merchant_id).code
                    for c in currencies
                }
                balances = await ledger_repo.balances(conn, list(codes.values()))
        out = []
        for c in currencies:
            s = settled.get(c, balance_repo.SettledFigures(0, 0, 0))
            p = paid.get(c, balance_repo.PayoutFigures(0, 0))
            out.append(MerchantBalance(
                c, -balances[codes[c]], s.carried, p.in_flight, p.paid, s.settled, s.count,
            ))
        return out
