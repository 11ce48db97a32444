"""Keep Serve's gRPC proxy on the configured host (loopback by default).

Ray Serve 2.x binds its gRPC proxy to ``[::]`` (every interface) whatever the
HTTP host is, and has no option for it. hive-ray promises that nothing
listens beyond 127.0.0.1 unless configured, so :func:`start_api` gives the
Serve controller (and through runtime-env inheritance, its proxies) two
environment variables: ``HIVE_HTTP_HOST``, and Serve's documented
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` pointing at
:func:`proxy_callback`. The proxy calls it while it starts, before its gRPC
server exists; it replaces Serve's ``add_grpc_address`` helper (looked up at
call time) with one that binds to that host, and adds no HTTP middleware.
"""

from __future__ import annotations

from typing import Any

ALL_INTERFACES = ("0.0.0.0", "::", "")
CALLBACK = "hive_ray._api._binding:proxy_callback"


def proxy_environment(host: str) -> dict[str, str]:
    """Environment variables for Serve's controller that keep gRPC on ``host``."""
    return {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK, "HIVE_HTTP_HOST": host}


def bind_grpc_to(host: str) -> None:
    if host in ALL_INTERFACES:
        return
    from ray.serve._private import default_impl

    address_host = f"[{host}]" if ":" in host else host

    def add_grpc_address(server: Any, server_address: str) -> None:
        port = server_address.rsplit(":", 1)[1]
        server.add_insecure_port(f"{address_host}:{port}")

    default_impl.add_grpc_address = add_grpc_address


def proxy_callback() -> list[Any]:
    """Run by each Serve proxy at start (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    from hive_ray._settings import Settings

    bind_grpc_to(Settings.load().http_host)
    return []
