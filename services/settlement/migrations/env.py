"""Alembic environment of the settlement schema (see shared.migrations)."""

from shared.migrations import run_env

run_env()
