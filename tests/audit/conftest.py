"""The audit tests use the services' own fixtures (clearing with its billing, settlement
on its own)."""

from tests.clearing.conftest import clearing
from tests.settlement.conftest import settlement

__all__ = ["clearing", "settlement"]
