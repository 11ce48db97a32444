"""What a process needs to reach hive's local Ray: the token, and the loopback switch.

Token authentication (on by default) needs a token before a new local cluster starts:
:func:`ensure_ray_token` creates one where Ray looks for it (``~/.ray/auth_token``, readable
by its owner only) unless ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` provides one.

The head ``hive up`` starts listens on loopback only. Ray treats a one-machine head
specially for that (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: node address and every listener
on loopback), and a driver must connect the same way (Ray otherwise rewrites ``127.0.0.1``
to the machine's external address): :func:`prepare_driver` does it for hive's own drivers.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hive_ray._errors import ConfigurationError

#: Ray's switch for a one-machine cluster: node address and listeners on loopback.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# ---------------------------------------------------------------------- token authentication
@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where Ray's token comes from: ``path`` (None: the ``RAY_AUTH_TOKEN`` variable)."""

    path: Path | None
    created: bool = False

    def describe(self) -> str:
        if self.path is None:
            return "Ray token from RAY_AUTH_TOKEN"
        if self.created:
            return f"Ray token created in {self.path} (readable by you only)"
        return f"Ray token in {self.path}"


def ensure_ray_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> TokenSource | None:
    """The token a new local cluster with token authentication needs, created if missing.

    Ray looks for it in this order: ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
    names, ``~/.ray/auth_token``. Only the last is ever created (0600, like Ray's own
    ``ray get-auth-token --generate`` but never readable by others).

    Returns:
        Where the token is, or None when ``RAY_AUTH_MODE`` turns authentication off.

    Raises:
        ConfigurationError: ``RAY_AUTH_TOKEN_PATH`` names a missing or empty file, or
            ``~/.ray/auth_token`` is empty.
    """
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return None
    if environ.get("RAY_AUTH_TOKEN"):
        return TokenSource(None)
    named = environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        path = Path(named).expanduser()
        if not _has_content(path):
            raise ConfigurationError(
                f"RAY_AUTH_TOKEN_PATH names {path}, which is missing or empty: put the cluster's "
                "Ray token there, or unset RAY_AUTH_TOKEN_PATH to use ~/.ray/auth_token "
                "(created if missing)"
            )
        return TokenSource(path)
    path = (home if home is not None else Path.home()) / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if not _has_content(path):
            raise ConfigurationError(
                f"{path} is empty: delete it (hive creates a new Ray token) or put the "
                "cluster's token in it"
            ) from None
        return TokenSource(path)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32))  # Ray's own format: 256 bits, hex
    return TokenSource(path, created=True)


def _has_content(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


# ---------------------------------------------------------------------- loopback
def address_host(address: str) -> str:
    """``"127.0.0.1:6379"`` -> ``"127.0.0.1"``; ``"[::1]:6379"`` -> ``"::1"``;
    ``"ray://h:10001"`` -> ``"h"``."""
    address = address.split("://", 1)[-1]
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


def is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def prepare_driver(address: str) -> None:
    """Let this process attach to a head that listens on loopback only.

    Ray rewrites a loopback address to the machine's external one unless it is told the
    cluster is a one-machine cluster; the variable reaches Ray when it is imported, the
    module constant when it already was (a notebook that ran ``import ray`` first).
    """
    if not is_loopback(address_host(address)):
        return
    os.environ[LOOPBACK_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
