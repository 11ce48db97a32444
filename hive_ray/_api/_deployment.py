"""The Serve side: the API deployment, and starting and stopping the application.

One deployment, ``HiveAPI``, is both the HTTP ingress (a FastAPI app built in
the replica, after its :class:`Hive` client connected) and the gRPC service
(methods named after the RPCs of ``hive.proto``, which Serve's gRPC proxy
calls).

Tuning (``deploy/serve.yaml`` holds the same values; ``perf/bench_api.py``
measures them): see the ``api_*`` settings in :mod:`hive_ray._settings`.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from hive_ray._api._keys import KeyRing, key_digests
from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.api")

APP_NAME = "hive"
DEPLOYMENT_NAME = "HiveAPI"
GRPC_SERVICER = "hive_ray._api.hive_pb2_grpc.add_HiveServicer_to_server"


@serve.ingress()
class HiveAPI:
    """One API replica: a Hive client, the caches, and the HTTP and gRPC front ends."""

    def __init__(self, settings: dict[str, Any], digests: dict[str, str] | None = None) -> None:
        from hive_ray._api._gateway import Gateway
        from hive_ray._api._service import ApiService

        resolved = Settings.load(settings)
        if digests is None:  # deployed from a config file: read the keys on this node
            digests = key_digests(resolved.api_keys, resolved.state_dir)
        if not digests:
            logger.warning("no API keys are configured: every authenticated request will be refused. "
                           "Run `hive up` once, or set HIVE_API_KEYS.")
        self._gateway = Gateway.connect(resolved)
        self.service = ApiService(resolved, self._gateway.call, KeyRing(digests),
                                  blocking=self._gateway.blocking)

    def __serve_build_asgi_app__(self) -> Any:
        from hive_ray._api._http import build_http_app

        return build_http_app(self.service)

    def __del__(self) -> None:
        try:
            self.service.close()
            self._gateway.close()
        except Exception:  # noqa: BLE001 - the replica is going away anyway
            pass

    # ------------------------------------------------------------------ gRPC (hive.proto)
    async def Submit(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802 - RPC names
        from hive_ray._api import _grpc

        return await _grpc.submit(self.service, request, grpc_context)

    async def GetTask(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.get_task(self.service, request, grpc_context)

    async def Cancel(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.cancel(self.service, request, grpc_context)

    async def AskAgent(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.ask_agent(self.service, request, grpc_context)

    async def GetAgent(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.get_agent(self.service, request, grpc_context)

    async def Publish(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.publish(self.service, request, grpc_context)

    async def Subscribe(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.subscribe(self.service, request, grpc_context)

    async def Unsubscribe(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        return await _grpc.unsubscribe(self.service, request, grpc_context)

    async def StreamEvents(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        async for reply in _grpc.stream_events(self.service, request, grpc_context):
            yield reply

    async def SubmitStream(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        async for reply in _grpc.submit_stream(self.service, request, grpc_context):
            yield reply

    async def StreamParts(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        async for reply in _grpc.stream_parts(self.service, request, grpc_context):
            yield reply

    async def FollowTopic(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        from hive_ray._api import _grpc

        async for reply in _grpc.follow_topic(self.service, request, grpc_context):
            yield reply


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Serve options of the API deployment, from settings (``deploy/serve.yaml`` mirrors them)."""
    return {
        "name": DEPLOYMENT_NAME,
        "num_replicas": settings.api_replicas,
        "max_ongoing_requests": settings.api_max_ongoing_requests,
        "max_queued_requests": settings.api_max_queued_requests,
        "ray_actor_options": {"num_cpus": 0},
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": 5,
    }


def build_application(settings: Settings, digests: dict[str, str] | None = None) -> Any:
    """The bound Serve application; ``digests`` None makes replicas read keys themselves."""
    deployment = serve.deployment(HiveAPI).options(**deployment_options(settings))
    # Settings travel as JSON; the keys themselves stay out of Ray's deployment metadata.
    return deployment.bind(settings.model_dump(mode="json", exclude={"api_keys"}), digests)


def app_builder(args: dict[str, Any]) -> Any:
    """For ``serve run`` / ``serve deploy`` (``deploy/serve.yaml``): ``args`` are settings overrides."""
    return build_application(Settings.load(dict(args or {})))


def start_api(settings: Settings, environment: dict[str, str] | None = None) -> dict[str, str]:
    """Start Serve (HTTP and gRPC proxies) and deploy the API; ``environment`` is for Serve's
    own processes (the benchmark passes ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` this way)."""
    import ray

    from hive_ray._errors import HiveConnectionError

    if not ray.is_initialized():
        raise HiveConnectionError("start_api() needs a connected Ray: call Hive.connect() first")
    from ray.serve.config import HTTPOptions, gRPCOptions

    from hive_ray._api._binding import proxy_environment

    serve.start(
        http_options=HTTPOptions(host=settings.http_host, port=settings.http_port,
                                 request_timeout_s=settings.api_request_timeout_seconds),
        grpc_options=gRPCOptions(port=settings.grpc_port, grpc_servicer_functions=[GRPC_SERVICER],
                                 request_timeout_s=settings.api_request_timeout_seconds),
        controller_options={"runtime_env": {"env_vars": {
            **proxy_environment(settings.http_host), **(environment or {})}}},
    )
    digests = key_digests(settings.api_keys, settings.state_dir)
    serve.run(build_application(settings, digests), name=APP_NAME, route_prefix="/", blocking=False)
    base = f"http://{_url_host(settings.http_host)}:{settings.http_port}"
    return {"http": base, "docs": f"{base}/docs", "dashboard": f"{base}/dashboard",
            "metrics": f"{base}/metrics", "grpc": f"{_url_host(settings.http_host)}:{settings.grpc_port}"}


def stop_api() -> None:
    import ray

    if not ray.is_initialized():
        return
    try:
        serve.delete(APP_NAME)
    except Exception as error:  # noqa: BLE001 - nothing deployed is fine
        logger.info("no API application to delete (%s)", error)
    serve.shutdown()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
