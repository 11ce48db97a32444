"""API keys: where they come from, how they are kept, and how a request's key is checked.

Keys come from ``Settings.api_keys`` (the config file or ``HIVE_API_KEYS``) and
from the admin key that ``hive up`` writes to ``<state_dir>/api_key``. A
replica keeps only their SHA-256 digests, so the keys themselves never travel
through Ray's deployment metadata; a presented key is hashed and compared with
every known digest in constant time (``hmac.compare_digest``, no early exit).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

Scope = Literal["read", "admin"]

#: Name of the admin key file in the state directory.
KEY_FILE = "api_key"

_RANK = {"read": 0, "admin": 1}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def ensure_api_key(state_dir: Path) -> tuple[str, bool]:
    """The admin key in ``state_dir/api_key``, created (mode 0600) on first call.

    Returns:
        ``(key, created)``: ``created`` is True when this call wrote the file.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / KEY_FILE
    key = "hive_" + secrets.token_urlsafe(32)
    try:
        # O_EXCL: two `hive up` racing cannot both write; 0600 from the start, never widened.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    return key, True


def key_digests(api_keys: Mapping[str, str], state_dir: Path | None) -> dict[str, str]:
    """Digest → scope for the configured keys and the state directory's admin key."""
    digests = {digest(key): scope for key, scope in api_keys.items()}
    if state_dir is not None:
        try:
            stored = (Path(state_dir) / KEY_FILE).read_text().strip()
        except OSError:
            stored = ""
        if stored:
            digests[digest(stored)] = "admin"
    return digests


class KeyRing:
    """Checks presented keys against known digests; knows nothing of HTTP or gRPC."""

    __slots__ = ("_digests",)

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._digests = [(d.encode(), scope) for d, scope in digests.items()]

    def __len__(self) -> int:
        return len(self._digests)

    def scope_of(self, key: str | None) -> Scope | None:
        """The scope of ``key``, or None if it is unknown (or missing)."""
        if not key:
            return None
        presented = digest(key).encode()
        found: Scope | None = None
        for known, scope in self._digests:  # every digest is compared: no timing signal
            if hmac.compare_digest(presented, known):
                found = scope  # type: ignore[assignment]
        return found

    @staticmethod
    def allows(scope: Scope | None, needed: Scope) -> bool:
        return scope is not None and _RANK[scope] >= _RANK[needed]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer":
        return None
    return token.strip() or None
