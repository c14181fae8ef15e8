"""Test fixtures: one PostgreSQL for the session (TEST_DATABASE_URL, or the embedded
server), and each test's services in schemas of their own, so tests never see each
other's data."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import shared  # noqa: F401  (generated protobuf package on the path)
from shared import audit, embedded_pg
from tests.support.harness import ServiceHandle, drop, launch

ROOT = Path(__file__).resolve().parent.parent
# The project's own copy of the specification's worked cases (see tests/cases/README.md).
CASES = ROOT / "tests" / "cases"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL", "")
    if url:
        yield url
        return
    server, url = embedded_pg.start(ROOT / ".clearhouse" / "test-pgdata", stop_at_exit=True)
    # Test data is throwaway: trading durability for speed is fine here, never in a service.
    server.psql("ALTER SYSTEM SET synchronous_commit = off;")
    server.psql("SELECT pg_reload_conf();")
    yield url


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    if not CASES.exists():
        pytest.fail(f"worked cases not found at {CASES}")
    return CASES


@pytest.fixture
async def billing(pg_url: str) -> AsyncIterator[ServiceHandle]:
    handle = await launch("billing", pg_url)
    yield handle
    await drop(handle)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run when an audited RPC answered OK without writing the audit trail
    (shared/audit.py: clearhouse_audit_unrecorded_total): every mutation people may call
    must call audit.record() (or audit.replayed() on an idempotent replay)."""
    if not audit.UNRECORDED:
        return
    counts = ", ".join(f"{m} x{n}" for m, n in sorted(audit.UNRECORDED.items()))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"audited calls answered OK without an audit record: {counts}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
