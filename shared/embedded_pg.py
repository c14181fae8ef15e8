"""The embedded default: a private PostgreSQL from the pgserver package.

Used when no DATABASE_URL is given, by `make up` and by the tests. The server keeps
its data in a local, git-ignored folder and listens on a Unix socket only.
"""

from __future__ import annotations

import logging
import os
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
    require_role_passwords(server, path)
    return server, asyncpg_url(server.get_uri())


# pgserver's initdb trusts every local connection. The services' own roles
# (shared/db_roles.py: `<schema>_migrator`, `<schema>_runtime`) must give their passwords
# all the same, so a service holding its runtime role's password cannot log in as its
# migration role. (PostgreSQL 16: a user name starting with / is a regular expression.)
ROLE_PASSWORD_RULES = [
    "# clearhouse: the services' migration and runtime roles log in with their passwords",
    "local   all   /_(migrator|runtime)$                  scram-sha-256",
    "host    all   /_(migrator|runtime)$   127.0.0.1/32   scram-sha-256",
    "host    all   /_(migrator|runtime)$   ::1/128        scram-sha-256",
]


def require_role_passwords(server: Any, data_dir: Path) -> None:
    """Puts ROLE_PASSWORD_RULES first in pg_hba.conf (once) and reloads the server."""
    hba = data_dir / "pg_hba.conf"
    current = hba.read_text(encoding="utf-8")
    if ROLE_PASSWORD_RULES[1] in current:
        return
    staged = hba.with_suffix(".clearhouse-tmp")
    staged.write_text("\n".join(ROLE_PASSWORD_RULES) + "\n" + current, encoding="utf-8")
    # The server may run as another system user (pgserver does when started as root).
    owner = hba.stat()
    staged.chmod(owner.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(staged, owner.st_uid, owner.st_gid)
    staged.replace(hba)  # atomic: a concurrent start reads the old file or the new one
    server.psql("SELECT pg_reload_conf();")


def asyncpg_url(libpq_uri: str) -> str:
    """pgserver gives a libpq URI (postgresql://user:@/db?host=/socket); SQLAlchemy wants a driver."""
    return libpq_uri.replace("postgresql://", "postgresql+asyncpg://", 1)
