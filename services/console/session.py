"""The session cookie: who is signed in, their token (the console calls the services as
them) and the CSRF token of their forms. Encrypted and authenticated (Fernet) so the
bearer token is never readable from the cookie, signed with a timestamp (itsdangerous)
so it expires; http-only, SameSite=Lax."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.console.identities import Person

COOKIE = "clearhouse_console"


@dataclass(frozen=True)
class Session:
    person: Person
    token: str
    csrf: str


class SessionCodec:
    def __init__(self, secret: str, max_age_s: int) -> None:
        secret = secret or secrets.token_urlsafe(32)
        key = hashlib.sha256(b"console-session-encryption:" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self._signer = URLSafeTimedSerializer(secret, salt="console-session")
        self.max_age_s = max_age_s

    def new(self, person: Person, token: str) -> Session:
        return Session(person, token, secrets.token_urlsafe(24))

    def dumps(self, session: Session) -> str:
        inner = json.dumps({"n": session.person.name, "r": session.person.role,
                            "t": session.token, "c": session.csrf}).encode()
        return self._signer.dumps(self._fernet.encrypt(inner).decode())

    def loads(self, cookie: str) -> Session | None:
        try:
            sealed = self._signer.loads(cookie, max_age=self.max_age_s)
            data = json.loads(self._fernet.decrypt(str(sealed).encode()))
            return Session(Person(data["n"], data["r"]), data["t"], data["c"])
        except (BadSignature, InvalidToken, ValueError, KeyError, TypeError):
            return None


def csrf_ok(session: Session, sent: str) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf, sent)
