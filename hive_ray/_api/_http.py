"""The HTTP API: a FastAPI app over an :class:`ApiService`.

Scopes: a ``read`` key may call every ``GET`` (lists, records, event streams,
virtual agents' states, topics' subscriptions and messages, ``/metrics``,
``/openapi.json``, the dashboard's data); everything that changes something
(submitting or cancelling tasks, messages to virtual agents, publishing and
subscribing to topics, creating, scaling or stopping pools) needs an ``admin``
key. Only ``/healthz`` and ``/readyz`` answer without a key, and the two pages
``/dashboard`` and ``/docs``: they hold no data, ask for a key, and fetch
everything else with it.

Handlers are ``async`` and hot reads answer pre-serialized JSON bytes, so a
cached read costs one dictionary look-up beyond routing and the key check.
"""


from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hive_ray._api import _problems
from hive_ray._api._keys import KeyRing
from hive_ray._api._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hive_ray._api._middleware import ApiMiddleware, request_span
from hive_ray._api._openapi import openapi_document
from hive_ray._api._problems import ProblemError, from_header_or_body
from hive_ray._api._schemas import (
    AgentMessage,
    AgentState,
    Problem,
    Ready,
    TaskAccepted,
    TaskOutcome,
    pool_request_models,
)
from hive_ray._api._service import ApiService, dumps
from hive_ray._api._streams import SSE_END, sse_frame, sse_part_frame, task_events, task_parts
from hive_ray._api._trace_ingress import inject_into
from hive_ray._models import PoolInfo, TaskPage, TaskRecord, TaskSpec
from hive_ray._task import TaskState
from hive_ray._virtual import MAX_KEY_LENGTH

JSON = "application/json"
POOL_NAME = r"^[A-Za-z0-9_.-]+$"
AGENT_KEY = r"^[^/]+$"


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events; `id` is the event sequence."}}


def resume_point(after: int, last_event_id: str | None) -> int:
    """Where a stream starts: after ``after``, or after the ``Last-Event-ID`` a reconnecting
    EventSource sends, whichever is later."""
    if last_event_id and last_event_id.isdigit():
        return max(after, int(last_event_id))
    return after


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem, "content": {_problems.PROBLEM_TYPE: {}}} for status in statuses}


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def build_http_app(service: ApiService) -> FastAPI:
    """The FastAPI app of one replica."""
    from hive_ray import __version__

    settings = service.settings
    app = FastAPI(
        title="hive-ray API",
        version=__version__,
        description="Pools of supervised agents and the tasks they run. Authenticate with "
        "`Authorization: Bearer <key>` (all but /healthz and /readyz); errors are RFC 9457 "
        "`application/problem+json`. A pool holds at most "
        f"{settings.max_agents_per_pool} agents (the max_agents_per_pool setting). Integers are "
        "strict: `2.0` where an integer is expected is a 422 with the code `int_from_float` (JSON "
        "Schema cannot tell 2.0 from 2). A 422 whose errors have the code `fields_disagree` names "
        "fields valid one by one but not together, which no schema can state either.",
        # Served below: the document needs a key, and the docs page asks for one.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    _problems.install(app)
    app.add_middleware(ApiMiddleware, metrics=service.metrics, max_body_bytes=settings.api_max_body_bytes,
                       settings=settings)
    bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                        description="An API key: `hive up` prints the admin key's location.")

    def guard(needed: str) -> Any:
        async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
            scope = service.keys.scope_of(credentials.credentials if credentials else None)
            if scope is None:
                raise ProblemError(
                    401, "send a valid API key as `Authorization: Bearer <key>`; `hive up` writes "
                    "an admin key to <state_dir>/api_key", slug="unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="hive"'})
            if not KeyRing.allows(scope, needed):
                raise ProblemError(403, f"this needs an {needed} key; the key sent has the {scope} scope",
                                   slug="forbidden")
            return scope

        return check

    read = [Depends(guard("read"))]
    admin = [Depends(guard("admin"))]
    auth_errors = _problem_responses(401, 403)
    PoolRequest, PoolScale = pool_request_models(settings.max_agents_per_pool)  # noqa: N806 - classes

    # ------------------------------------------------------------------ health
    @app.get("/healthz", tags=["health"], summary="Liveness: the replica answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=Ready, responses=_problem_responses(503),
             summary="Readiness: the orchestrator answers a health call")
    async def readyz() -> Response:
        try:
            health = await service.ready()
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            raise ProblemError(503, f"the orchestrator did not answer its health check "
                               f"({type(error).__name__}); it may be starting or restarting",
                               slug="not-ready", headers={"Retry-After": "2"}) from None
        return _json(dumps({"status": "ready", "orchestrator": health}))

    @app.get("/metrics", tags=["health"], dependencies=read, responses=auth_errors,
             response_class=Response, summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        return Response(await service.metrics_text(), media_type=METRICS_CONTENT_TYPE)

    # ------------------------------------------------------------------ pools
    @app.get("/v1/pools", tags=["pools"], dependencies=read, response_model=list[PoolInfo],
             responses=auth_errors, summary="List pools and their agents")
    async def list_pools() -> Response:
        body, hit = await service.pools_json()
        return _json(body, headers={"X-Cache": "hit" if hit else "miss"})

    @app.post("/v1/pools", tags=["pools"], dependencies=admin, status_code=201, response_model=PoolInfo,
              responses={**auth_errors, **_problem_responses(404, 409, 422)},
              summary="Create a pool (or add agents to it) and wait until its agents are ready",
              description="An existing pool of the same agent type gets `count` more agents (409 if "
              "that would pass max_agents_per_pool or the pool runs another agent type). An unknown "
              "agent type is a 404. Answers once the agents are ready, or after "
              "`api_spawn_wait_seconds` (5 s) with those the cluster could not place yet `starting` "
              "(they keep starting, and their demand reaches the Ray autoscaler).")
    async def create_pool(spec: PoolRequest) -> Response:  # type: ignore[valid-type]
        info = await service.create_pool(spec.model_dump())
        return _json(dumps(info), 201, {"Location": f"/v1/pools/{info['name']}"})

    PoolName = Annotated[str, Path(min_length=1, max_length=64, pattern=POOL_NAME)]

    @app.get("/v1/pools/{name}", tags=["pools"], dependencies=read, response_model=PoolInfo,
             responses={**auth_errors, **_problem_responses(404)}, summary="One pool and its agents")
    async def get_pool(name: PoolName) -> Response:
        body, hit = await service.pool_json(name)
        return _json(body, headers={"X-Cache": "hit" if hit else "miss"})

    @app.patch("/v1/pools/{name}", tags=["pools"], dependencies=admin, response_model=PoolInfo,
               responses={**auth_errors, **_problem_responses(404, 409, 422)},
               summary="Scale a pool to `count` agents",
               description="A pool of virtual agents keeps its number of shards (they own its keys): "
               "another `count` is a 409, and its own count restarts failed shards.")
    async def scale_pool(name: PoolName, scale: PoolScale) -> Response:  # type: ignore[valid-type]
        return _json(dumps(await service.scale_pool(name, scale.count)))  # type: ignore[attr-defined]

    @app.delete("/v1/pools/{name}", tags=["pools"], dependencies=admin, response_model=PoolInfo,
                responses={**auth_errors, **_problem_responses(404)},
                summary="Stop a pool's agents and remove it; its queued tasks are cancelled")
    async def stop_pool(name: PoolName) -> Response:
        return _json(dumps(await service.stop_pool(name)))

    # ------------------------------------------------------------------ tasks
    max_wait = settings.api_max_wait_seconds

    @app.post(
        "/v1/tasks", tags=["tasks"], dependencies=admin, status_code=202, response_model=TaskAccepted,
        responses={200: {"model": TaskOutcome, "description": "With `wait`: the task ended in time."},
                   **auth_errors, **_problem_responses(404, 409, 413, 422, 429, 504)},
        summary="Submit a task",
        description="Answers 202 with a Location at once. With `wait` (seconds), answers 200 with "
        "the result if the task ends in time, else 504 (the task keeps running). With "
        "`stream=true`, answers 200 with the task's parts as Server-Sent Events (as "
        "`GET /v1/tasks/{id}/stream`); closing the connection before the end cancels the task "
        "unless `detach=true`. An `Idempotency-Key` makes a retried submission return the first "
        "task; reusing a key with another body is a 409.")
    async def submit(
        spec: TaskSpec,
        wait: Annotated[float | None, Query(gt=0, le=max_wait, description="Seconds to wait for the result.")] = None,
        stream: Annotated[bool, Query(description="Answer with the task's parts as Server-Sent Events.")] = False,
        detach: Annotated[bool, Query(description="With `stream`: a closed connection leaves the task "
                                      "running.")] = False,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
    ) -> Response:
        if stream and wait is not None:
            raise ProblemError(422, "give either stream=true or wait, not both: a stream already "
                               "answers as the task runs", slug="validation",
                               errors=[{"field": "wait", "in": "query", "message": "not with stream=true",
                                        "code": "fields_disagree"}])
        template = inject_into(spec.template(), request_span.get())
        replayed = False
        if idempotency_key is not None:
            template["idempotency_key"] = from_header_or_body(idempotency_key, spec.idempotency_key,
                                                              "idempotency_key")
            replayed = service.check_idempotency(
                idempotency_key, spec.model_dump(mode="json", exclude={"idempotency_key"}))
        if stream:
            accepted = await service.submit({**template, "stream": True}, spec.payload)
            return parts_response(accepted["task_id"], 0, cancel_on_disconnect=not detach,
                                  headers={"Location": f"/v1/tasks/{accepted['task_id']}"})
        return await accepted_or_ended(template, spec.payload, wait, replayed)

    async def accepted_or_ended(template: dict[str, Any], payload: Any, wait: float | None,
                                replayed: bool) -> Response:
        """Submit; answer 202 with a Location at once, or with ``wait``, 200 with the outcome (504
        if the task has not ended by then)."""
        if wait is None:
            accepted = await service.submit(template, payload)
            location = f"/v1/tasks/{accepted['task_id']}"
            return _json(dumps({**accepted, "replayed": replayed}), 202, {"Location": location})
        task_id, (state, result, error) = await service.run(template, payload, wait)
        location = f"/v1/tasks/{task_id}"
        if state == "pending":
            raise ProblemError(504, f"task {task_id} did not finish within wait={wait:g} s; it keeps "
                               f"running: GET {location} for its state", slug="wait-timeout",
                               headers={"Location": location}, task_id=task_id)
        return _json(dumps({"task_id": task_id, "state": state, "result": result, "error": error}), 200,
                     {"Location": location})

    @app.get("/v1/tasks", tags=["tasks"], dependencies=read, response_model=TaskPage,
             responses={**auth_errors, **_problem_responses(422)},
             summary="Recent tasks, newest first, with filters and cursor pagination")
    async def list_tasks(
        request: Request,
        state: TaskState | None = None,
        pool: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=128, description="`next_cursor` of the previous page.")] = None,
    ) -> Response:
        page = await service.tasks(state.value if state else None, pool, limit, cursor)
        headers = {}
        if page["next_cursor"]:
            query = {k: v for k, v in (("state", state.value if state else None), ("pool", pool),
                                       ("limit", limit), ("cursor", page["next_cursor"])) if v is not None}
            headers["Link"] = f'</v1/tasks?{urlencode(query)}>; rel="next"'
        return _json(dumps(page), headers=headers)

    TaskId = Annotated[str, Path(min_length=1, max_length=128)]

    @app.get("/v1/tasks/{task_id}", tags=["tasks"], dependencies=read, response_model=TaskRecord,
             responses={**auth_errors, **_problem_responses(404)}, summary="A task's record")
    async def get_task(task_id: TaskId) -> Response:
        body, hit = await service.task_json(task_id)
        return _json(body, headers={"X-Cache": "hit" if hit else "miss"})

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], dependencies=admin, response_model=TaskRecord,
              responses={**auth_errors, **_problem_responses(404)},
              summary="Cancel a queued or running task (a finished one is left as it is)")
    async def cancel_task(task_id: TaskId) -> Response:
        return _json(dumps(await service.cancel(task_id)))

    # ------------------------------------------------------------------ virtual agents
    AgentType = Annotated[str, Path(min_length=1, max_length=200, examples=["cart"],
                                    description="A virtual agent type that a pool runs (e.g. `cart`).")]
    # A path segment cannot hold "/" (clients and proxies read %2F as one): such keys are
    # reachable from Python only, and the document says so with the pattern.
    AgentKey = Annotated[str, Path(min_length=1, max_length=MAX_KEY_LENGTH, pattern=AGENT_KEY,
                                   examples=["user-42"], description="The agent's key: 1 to "
                                   f"{MAX_KEY_LENGTH} characters, without `/`.")]

    @app.post(
        "/v1/agents/{agent_type}/{key}/messages", tags=["agents"], dependencies=admin, status_code=202,
        response_model=TaskAccepted,
        responses={200: {"model": TaskOutcome, "description": "With `wait`: the agent answered in time."},
                   **auth_errors, **_problem_responses(404, 409, 413, 422, 429, 504)},
        summary="Send a message to a virtual agent (activated by it if it is not active)",
        description="The message is a task of the agent's type whose affinity key is its key: it "
        "goes to the one activation of `(agent_type, key)`, which handles its messages one at a "
        "time, in arrival order. Answers 202 with the task's Location at once; with `wait` "
        "(seconds), 200 with the agent's answer (`result`, or `error` if its handler raised) if "
        "it answers in time, else 504 (the message keeps running). A type that no pool runs as "
        "virtual agents is a 404. A `message_id` (or the `Idempotency-Key` header) makes a message "
        "sent again return the first one's task; reusing it with another message is a 409.")
    async def send_message(
        agent_type: AgentType,
        key: AgentKey,
        body: AgentMessage,
        wait: Annotated[float | None, Query(gt=0, le=max_wait, description="Seconds to wait for the "
                                            "answer.")] = None,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=256)] = None,
    ) -> Response:
        message_id = from_header_or_body(idempotency_key, body.message_id, "message_id")
        spec = TaskSpec(agent_type=agent_type, affinity_key=key, idempotency_key=message_id,
                        payload=body.message)
        await service.ensure_virtual(agent_type, key)
        replayed = False
        if message_id is not None:
            replayed = service.check_message_id(agent_type, key, message_id,
                                                spec.model_dump(mode="json", exclude={"idempotency_key"}))
        template = inject_into(spec.template(), request_span.get())
        return await accepted_or_ended(template, body.message, wait, replayed)

    @app.get("/v1/agents/{agent_type}/{key}", tags=["agents"], dependencies=read, response_model=AgentState,
             responses={**auth_errors, **_problem_responses(404)},
             summary="A virtual agent: its saved state, version, owner and activation",
             description="A key that was never sent a message answers version 0 and a null state. "
             "The state is what the agent's last message that changed it left (saved with that "
             "message's outcome).")
    async def get_agent(agent_type: AgentType, key: AgentKey) -> Response:
        return _json(dumps(await service.agent(agent_type, key)))

    # ------------------------------------------------------------------ event streams
    stream_headers, sse_doc = STREAM_HEADERS, SSE_DOC

    @app.get("/v1/tasks/{task_id}/events", tags=["events"], dependencies=read,
             responses={**sse_doc, **auth_errors, **_problem_responses(404)}, response_class=StreamingResponse,
             summary="A task's events as Server-Sent Events, until it ends")
    async def task_stream(
        task_id: TaskId,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        await service.task_json(task_id)  # 404 before the stream starts
        start = resume_point(after, last_event_id)

        async def frames() -> Any:
            yield b"retry: 1000\n\n"
            async for event in task_events(service.call, after=start, task_id=task_id,
                                           max_seconds=settings.api_stream_max_seconds):
                yield sse_frame(event)
                if event is not None and event["state"] in ("succeeded", "failed", "cancelled", "timed_out"):
                    yield SSE_END

        return StreamingResponse(frames(), media_type="text/event-stream", headers=stream_headers)

    def parts_response(task_id: str, after: int, *, cancel_on_disconnect: bool,
                       headers: dict[str, str] | None = None) -> StreamingResponse:
        async def frames() -> Any:
            ended = False
            try:
                yield b"retry: 1000\n\n"
                async for item in task_parts(service.call, service.resolve, task_id, after=after,
                                             max_seconds=settings.api_stream_max_seconds):
                    yield sse_part_frame(item)
                ended = True  # the end, or the stream's time limit: the client resumes from its last id
            finally:
                if not ended and cancel_on_disconnect:
                    service.cancel_soon(task_id)  # the consumer went away before the end

        return StreamingResponse(frames(), media_type="text/event-stream",
                                 headers={**stream_headers, **(headers or {})})

    @app.get("/v1/tasks/{task_id}/stream", tags=["events"], dependencies=read,
             responses={**sse_doc, **auth_errors, **_problem_responses(404)}, response_class=StreamingResponse,
             summary="A streaming task's parts as Server-Sent Events, until it ends",
             description="`event: part` frames carry each part as JSON (`id` its sequence: "
             "Last-Event-ID resumes), `event: restart` says the task runs again from its start (its "
             "agent's host was lost), `event: missed` counts parts dropped before they were read, "
             "and `event: end` carries the task's state and error. A task whose handler is not a "
             "generator sends its result as its one part. Watching does not own the task: closing "
             "this stream leaves it running (submit with `POST /v1/tasks?stream=true` for that).")
    async def parts_stream(
        task_id: TaskId,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        await service.task_json(task_id)  # 404 before the stream starts
        return parts_response(task_id, resume_point(after, last_event_id), cancel_on_disconnect=False)

    @app.get("/v1/events", tags=["events"], dependencies=read, responses={**sse_doc, **auth_errors},
             response_class=StreamingResponse, summary="Every task event as Server-Sent Events")
    async def event_stream(
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> StreamingResponse:
        start = resume_point(after, last_event_id)

        async def frames() -> Any:
            yield b"retry: 1000\n\n"
            async for event in task_events(service.call, after=start,
                                           max_seconds=settings.api_stream_max_seconds):
                yield sse_frame(event)

        return StreamingResponse(frames(), media_type="text/event-stream", headers=stream_headers)

    # ------------------------------------------------------------------ topics
    from hive_ray._api._http_topics import add_topic_routes

    add_topic_routes(app, service, read=read, admin=admin)

    # ------------------------------------------------------------------ performance (the analyzer)
    @app.get("/v1/perf/report", tags=["perf"], dependencies=read, responses=auth_errors,
             summary="The performance analyzer's report: latencies per operation, memory, "
             "queues, recommendations")
    async def perf_report() -> Response:
        return _json(dumps(await service.perf.report()))

    @app.get("/v1/perf/report.html", tags=["perf"], dependencies=read, responses=auth_errors,
             response_class=HTMLResponse, summary="The performance report as one self-contained HTML page")
    async def perf_report_html() -> HTMLResponse:
        # The page carries its own inline styles and SVG charts and loads nothing else.
        return HTMLResponse(await service.perf.report_html(), headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src data:"})

    @app.get("/v1/perf/regressions", tags=["perf"], dependencies=read,
             responses={**auth_errors, **_problem_responses(404, 409)},
             summary="The current window compared with the saved baseline (`hive perf baseline save`)")
    async def perf_regressions() -> Response:
        return _json(dumps(await service.perf.regressions()))

    # ------------------------------------------------------------------ the document and the pages
    @app.get("/openapi.json", include_in_schema=False, dependencies=read)
    async def openapi(request: Request) -> Response:
        document = app.openapi()
        root_path = request.scope.get("root_path", "").rstrip("/")
        if root_path:  # mounted under a prefix (a Serve route prefix): say where
            document = {**document, "servers": [{"url": root_path}]}
        return _json(dumps(document))

    def page(name: str) -> str:
        return resources.files("hive_ray._api").joinpath(f"static/{name}").read_text(encoding="utf-8")

    dashboard_page, docs_page = page("dashboard.html"), page("docs.html")

    # Both pages are self-contained: a page that holds a key loads no third-party script.
    page_headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
    }

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(dashboard_page, headers=page_headers)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page, headers=page_headers)

    @app.get("/v1/overview", tags=["dashboard"], dependencies=read, responses=auth_errors,
             summary="The dashboard's data: pools, counters, recent failures, throughput and latency")
    async def overview() -> Response:
        return _json(dumps(await service.overview()))

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = openapi_document(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
    return app
