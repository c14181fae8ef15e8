"""Prints the permission tables as docs/security.md shows them (paste after a change;
tests/security/test_permission_tables.py checks the docs against the code)."""

from __future__ import annotations

import shared  # noqa: F401  (generated protobuf package on the path)
from shared.permissions import markdown
from tests.support.security import TABLES

if __name__ == "__main__":
    print("\n\n".join(markdown(t) for tables in TABLES.values() for t in tables))
