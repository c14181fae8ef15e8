"""The guard's memory of known tokens: a repeat call is not hashed again, an unknown
token is refused every time and never remembered."""

from __future__ import annotations

import pytest

from shared.security import Guard, Identity, Unauthenticated, token_hash


def test_known_tokens_are_remembered_and_unknown_ones_refused_without_growing_it():
    guard = Guard({}, [Identity("ada", "admin", token_hash("ada-token")),
                       Identity("bea", "admin", token_hash("bea-token"))])
    for _ in range(3):
        assert guard.authenticate(None, "Bearer ada-token").name == "ada"  # type: ignore[arg-type]
    assert guard.authenticate(None, "Bearer bea-token").name == "bea"  # type: ignore[arg-type]
    for i in range(50):
        with pytest.raises(Unauthenticated) as err:
            guard.authenticate(None, f"Bearer made-up-{i}")  # type: ignore[arg-type]
        assert err.value.reason == "TOKEN_UNKNOWN"
    assert sorted(c.name for c in guard._known.values()) == ["ada", "bea"]
    assert len(guard._known) == 2
