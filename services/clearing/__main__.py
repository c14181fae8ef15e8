"""`python -m services.clearing [serve|migrate]`."""

from __future__ import annotations

import sys

from services.clearing.bootstrap import MIGRATIONS, build_app
from services.clearing.settings import ClearingSettings
from shared import cli


def main() -> int:
    return cli.main("clearing", ClearingSettings, build_app, MIGRATIONS)


if __name__ == "__main__":
    sys.exit(main())
