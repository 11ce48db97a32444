"""hive-ray's HTTP and gRPC API on Ray Serve, and its dashboard page.

``import hive_ray._api`` is cheap: Ray Serve (about 2 s to import) is loaded
only when :func:`start_api` or :func:`stop_api` runs. The CLI calls these:

- :func:`ensure_api_key` on ``hive up``, to create the admin key once;
- :func:`start_api` to deploy the app (HTTP and gRPC), returning its URLs;
- :func:`stop_api` on ``hive down``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hive_ray._api._keys import ensure_api_key

if TYPE_CHECKING:
    from hive_ray._settings import Settings


def start_api(settings: Settings, environment: dict[str, str] | None = None) -> dict[str, str]:
    """Deploy the API: HTTP on ``http_host:http_port``, gRPC on ``grpc_port``.

    Needs a connected Ray (``Hive.connect()``). ``environment`` adds variables
    to Serve's own processes (e.g. ``RAY_SERVE_THROUGHPUT_OPTIMIZED``) when this
    call starts Serve. Returns the URLs: ``http``, ``docs``, ``dashboard``,
    ``metrics`` and ``grpc``.
    """
    from hive_ray._api._deployment import start_api as start

    return start(settings, environment)


def stop_api() -> None:
    """Remove the API application and stop Serve's proxies (frees both ports)."""
    from hive_ray._api._deployment import stop_api as stop

    stop()


def key_file(state_dir: Path) -> Path:
    """Where :func:`ensure_api_key` keeps the admin key."""
    from hive_ray._api._keys import KEY_FILE

    return Path(state_dir) / KEY_FILE


__all__ = ["ensure_api_key", "key_file", "start_api", "stop_api"]
