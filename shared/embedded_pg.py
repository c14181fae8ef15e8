"""The embedded default: a private PostgreSQL from the pgserver package.

Used when no DATABASE_URL is given, by `make up` and by the tests. The server keeps
its data in a local, git-ignored folder and listens on a Unix socket only.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start(data_dir: str | Path, *, stop_at_exit: bool = True) -> tuple[Any, str]:
    """Start (or join) the embedded server; returns it and its asyncpg URL."""
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls
        # back to /tmp, which is what we want anyway.
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(str(path), cleanup_mode="stop" if stop_at_exit else None)
    return server, asyncpg_url(server.get_uri())


def asyncpg_url(libpq_uri: str) -> str:
    """pgserver gives a libpq URI (postgresql://user:@/db?host=/socket); SQLAlchemy wants a driver."""
    return libpq_uri.replace("postgresql://", "postgresql+asyncpg://", 1)
