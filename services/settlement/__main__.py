"""`python -m services.settlement [serve|migrate]`."""

from __future__ import annotations

import sys

from services.settlement.bootstrap import MIGRATIONS, build_app
from services.settlement.settings import SettlementSettings
from shared import cli


def main() -> int:
    return cli.main("settlement", SettlementSettings, build_app, MIGRATIONS)


if __name__ == "__main__":
    sys.exit(main())
