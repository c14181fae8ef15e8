"""Database access of the settlement service."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class Database:
    engine: AsyncEngine
    schema: str
