"""`python -m services.console`: serve the console with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from services.console.bootstrap import build_app
from services.console.settings import ConsoleSettings
from shared.settings import SettingsError, load


def main() -> int:
    try:
        settings = load("console", ConsoleSettings)
    except SettingsError:
        return 2  # load() printed one line per bad variable
    logging.basicConfig(level=settings.log_level)
    if not settings.identities_file:
        logging.getLogger("clearhouse.console").warning(
            "CONSOLE_IDENTITIES_FILE is not set: nobody can sign in")
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
