"""Alembic environment of the clearing schema (see shared.migrations)."""

from shared.migrations import run_env

run_env()
