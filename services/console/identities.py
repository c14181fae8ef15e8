"""Who may sign in: the people of security's identities file (docs/security.md), known by
the SHA-256 of their bearer token. The console keeps no list of its own; the services
check every call again with the same file."""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROLES = ("viewer", "operator", "admin")
# Roles are cumulative (viewer ⊂ operator ⊂ admin).
RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class Person:
    name: str
    role: str

    def may(self, role: str) -> bool:
        """True when this person's role includes `role`."""
        return RANK.get(self.role, -1) >= RANK[role]


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Identities:
    """The people (not the systems) of an identities file."""

    def __init__(self, people: dict[str, tuple[str, str]]) -> None:
        # token hash -> (name, role)
        self._by_hash = people

    @classmethod
    def load(cls, path: str) -> Identities:
        if not path:
            return cls({})
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        people = {}
        for entry in data.get("callers", []):
            role = str(entry.get("role", ""))
            if role in ROLES:
                people[str(entry["token_sha256"]).lower()] = (str(entry["name"]), role)
        return cls(people)

    def find(self, token: str, name: str = "") -> Person | None:
        """The person whose token this is (and whose name, when one is given)."""
        digest = token_sha256(token)
        for known, (who, role) in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                if name and name != who:
                    return None
                return Person(who, role)
        return None
