"""Alembic environment of the billing schema (see shared.migrations)."""

from shared.migrations import run_env

run_env()
