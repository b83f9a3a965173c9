"""Control authentication: bearer tokens compared in constant time, two roles.

Only SHA-256 digests of tokens are held; every configured digest is compared (no early
exit), with `hmac.compare_digest`. Tokens never reach a log line.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.config import TokenSpec
from sidecar.errors import PermissionDenied, Unauthenticated

VIEWER = "viewer"
OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


class Authenticator:
    def __init__(self, tokens: Sequence[TokenSpec]) -> None:
        self._tokens = tuple(tokens)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        header = ""
        for key, value in metadata:
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <token>'"
            )
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: TokenSpec | None = None
        for spec in self._tokens:  # compare against every token: timing reveals nothing
            if hmac.compare_digest(digest, spec.sha256):
                found = spec
        if found is None:
            raise Unauthenticated("unknown credentials: the bearer token is not accepted")
        return Principal(found.name, found.role)

    def authorize(
        self, metadata: Iterable[tuple[str, str | bytes]], role: str, method: str
    ) -> Principal:
        principal = self.authenticate(metadata)
        if role == OPERATOR and principal.role != OPERATOR:
            raise PermissionDenied(
                f"principal {principal.name!r} has role {principal.role}; {method} needs operator"
            )
        return principal
