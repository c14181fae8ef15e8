"""`python -m services.billing [serve|migrate]`."""

from __future__ import annotations

import sys

from services.billing.bootstrap import MIGRATIONS, build_app
from services.billing.settings import BillingSettings
from shared import cli


def main() -> int:
    return cli.main("billing", BillingSettings, build_app, MIGRATIONS)


if __name__ == "__main__":
    sys.exit(main())
