"""`python -m services.payout_simulator`: serve the simulator on PAYOUT_SIM_HOST:PAYOUT_SIM_PORT."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.payout_simulator.bootstrap import build_app
from services.payout_simulator.settings import PayoutSimulatorSettings
from shared import logging as json_logging
from shared import server
from shared.settings import load as load_settings
from shared.settings import unknown_variables


def main() -> int:
    settings = load_settings("payout_simulator", PayoutSimulatorSettings)
    json_logging.configure(settings.log_level)
    for warning in unknown_variables(PayoutSimulatorSettings):
        logging.getLogger(__name__).warning(warning)
    asyncio.run(
        server.serve_forever(build_app(settings), settings.host, settings.port,
                             settings.grace_period_s)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
