"""`python -m services.payout_simulator`: serve the simulator on PAYOUT_SIM_HOST:PAYOUT_SIM_PORT."""

from __future__ import annotations

import asyncio
import sys

from services.payout_simulator.bootstrap import build_app
from services.payout_simulator.settings import PayoutSimulatorSettings
from shared import logging as json_logging
from shared import server


def main() -> int:
    settings = PayoutSimulatorSettings()
    json_logging.configure(settings.log_level)
    asyncio.run(
        server.serve_forever(build_app(settings), settings.host, settings.port,
                             settings.grace_period_s)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
