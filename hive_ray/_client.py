"""``hive_ray.Hive``: the client that notebooks, scripts, the CLI and the API use.

::

    from hive_ray import Hive

    with Hive.connect() as hive:          # a running cluster, or an embedded local Ray
        hive.spawn("echo", count=4)
        print(hive.submit("echo", {"hello": "world"}).result())
        squares = hive.map("compute", [{"rounds": n} for n in range(100)])

Synchronous calls block on ``ray.get`` and never call ``asyncio.run``, so they
work in plain scripts and inside Jupyter's running event loop; task handles
are also awaitable (``await hive.submit(...)`` works at a notebook's top level).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hive_ray._errors import HiveConnectionError, HiveError, ResultLostError
from hive_ray._operations import DATA_PLANE_OPERATIONS, RETRYABLE_OPERATIONS
from hive_ray._results import StoredResult, resolve, resolve_async, unwrap
from hive_ray._tracing import inject_client_context, traced_call

if TYPE_CHECKING:
    from hive_ray._agent import Agent
    from hive_ray._models import AgentInfo, PoolInfo, TaskRecord
    from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.client")

#: File in the state directory where ``hive up`` records the cluster it started.
CLUSTER_FILE = "cluster.json"

#: Calls that go over the data plane when it is open (the rest are Ray calls), and calls
#: that are safe to send again after the stream broke: see hive_ray/_operations.py.
_CHANNEL_METHODS = DATA_PLANE_OPERATIONS
_RETRYABLE_METHODS = RETRYABLE_OPERATIONS


#: How long reads keep retrying while the orchestrator restarts.
RECONNECT_SECONDS = 60.0


class _Interrupted(Exception):
    """The orchestrator went away mid-call (it may be restarting)."""


class TaskHandle:
    """A submitted task. ``result()`` blocks; ``await handle`` does not."""

    __slots__ = ("task_id", "pool", "_hive")

    def __init__(self, hive: Hive, task_id: str, pool: str) -> None:
        self._hive = hive
        self.task_id = task_id
        self.pool = pool

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, waiting up to ``timeout`` seconds (None: as long as it takes).

        Raises:
            TaskFailedError, TaskCancelledError, TaskTimeoutError: the task did not succeed,
                or (TaskTimeoutError) it was still running when ``timeout`` ran out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        answer = self._hive._call("wait", self.task_id, timeout)
        return self._hive._value(self.task_id, answer, _remaining(deadline))

    def __await__(self) -> Any:
        return self._await_result().__await__()

    async def _await_result(self) -> Any:
        answer = await self._hive._call_async("wait", self.task_id, None)
        return await self._hive._value_async(self.task_id, answer)

    def status(self) -> TaskRecord:
        return self._hive.task(self.task_id)

    def cancel(self) -> TaskRecord:
        return self._hive.cancel(self.task_id)

    def done(self) -> bool:
        return self.status().done

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} pool={self.pool!r}>"

    def _repr_html_(self) -> str:
        return self.status()._repr_html_()


class Hive:
    """A connection to hive-ray's orchestrator. Build it with :meth:`Hive.connect`."""

    def __init__(self, orchestrator: Any, settings: Settings, *, owns_ray: bool) -> None:
        self._orchestrator = orchestrator
        self.settings = settings
        self._owns_ray = owns_ray
        self._closed = False
        self._channel: Any = None

    # ------------------------------------------------------------------ connecting
    @classmethod
    def connect(
        cls,
        address: str | None = None,
        *,
        settings: Settings | dict[str, Any] | None = None,
        detached: bool | None = None,
        embedded: bool = True,
    ) -> Hive:
        """Attach to a running cluster, or start an embedded local Ray.

        The cluster is, in order: ``address``, ``RAY_ADDRESS``, the local cluster
        ``hive up`` started, or else a new local Ray owned by this client and
        stopped by :meth:`close` (unless ``embedded`` is False: then no cluster is an
        error). The orchestrator is found by name, or created (detached, so that it
        outlives this driver, unless Ray is embedded).
        """
        _ensure_token_auth()
        import ray

        from hive_ray._settings import Settings

        if not isinstance(settings, Settings):
            settings = Settings.load(settings)
        owns_ray = False
        if not ray.is_initialized():
            target = address or os.environ.get("RAY_ADDRESS") or local_cluster_address(settings)
            if target:
                try:
                    ray.init(address=target, namespace=settings.namespace, logging_level=logging.WARNING,
                             log_to_driver=False)
                except (ConnectionError, RuntimeError) as error:
                    raise HiveConnectionError(
                        f"could not connect to the Ray cluster at {target!r}: {error}. Check the "
                        "address, or unset RAY_ADDRESS to start an embedded local Ray."
                    ) from None
            elif not embedded:
                raise HiveConnectionError(
                    "no hive cluster is running: start one with `hive up`, or set RAY_ADDRESS "
                    "to a running Ray cluster"
                )
            else:
                # address="local": a new Ray even if some other cluster runs on this machine.
                ray.init(address="local", namespace=settings.namespace, logging_level=logging.WARNING,
                         include_dashboard=False)
                owns_ray = True
        orchestrator = get_or_create_orchestrator(settings, detached=not owns_ray if detached is None else detached)
        hive = cls(orchestrator, settings, owns_ray=owns_ray)
        hive._call("health")  # fail here, clearly, if it cannot answer
        hive._open_channel()
        return hive

    def close(self) -> None:
        """Disconnect; an embedded Ray started by :meth:`connect` is shut down."""
        if self._closed:
            return
        self._closed = True
        if self.settings.tracing:
            from hive_ray._tracing import tracer_from_settings

            tracer = tracer_from_settings(self.settings, "client")
            if tracer is not None:
                tracer.flush(timeout=2.0)  # this client's spans, before Ray may go away
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._owns_ray:
            import ray

            try:
                ray.get(self._orchestrator.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            ray.shutdown()

    def __enter__(self) -> Hive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_channel(self) -> None:
        """Use the orchestrator's data plane when it is reachable from here (same machine)."""
        import ray

        from hive_ray._runtime._channel import ChannelClient

        endpoint = ray.get(self._orchestrator.client_endpoint.remote())
        if endpoint is None:
            return
        address, token, node_address = endpoint
        if address[0] == "127.0.0.1" and node_address != ray.util.get_node_ip_address():
            return  # the orchestrator's loopback is another machine's
        try:
            self._channel = ChannelClient(tuple(address), token, name=f"driver-{os.getpid()}")
        except OSError as error:
            logger.info("data plane at %s unreachable (%s); using Ray calls", address, error)

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call the orchestrator; reads are retried while it restarts (up to a limit)."""
        if self._closed:
            raise HiveConnectionError("this Hive client is closed; call Hive.connect() again")
        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                return self._call_once(method, *args, timeout=timeout)
            except _Interrupted as interrupted:
                if method not in _RETRYABLE_METHODS or time.monotonic() > deadline:
                    raise HiveConnectionError(
                        f"lost the orchestrator during {method}() ({interrupted}); it may be "
                        "restarting. Try again in a few seconds, or run `hive status`."
                    ) from None
                time.sleep(0.2)
                self._reopen_channel()

    def _call_once(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        channel = self._channel
        if channel is not None and not channel.closed and method in _CHANNEL_METHODS:
            from hive_ray._runtime._channel import ChannelClosed

            try:
                return channel.call(method, *args, timeout=timeout)
            except ChannelClosed as closed:
                self._channel = None  # the orchestrator restarted or went away
                raise _Interrupted(str(closed)) from None
        try:
            return ray.get(getattr(self._orchestrator, method).remote(*args), timeout=timeout)
        except RayTaskError as error:
            cause = error.cause if hasattr(error, "cause") else None
            if isinstance(cause, HiveError):
                raise cause from None
            raise
        except RayActorError as error:
            raise _Interrupted(type(error).__name__) from None

    def _reopen_channel(self) -> None:
        if self._channel is not None and not self._channel.closed:
            return
        self._channel = None
        try:
            self._open_channel()
        except Exception:  # noqa: BLE001 - not back yet; Ray calls queue until it is
            pass

    # ------------------------------------------------------------------ pools
    def spawn(self, agent: str | type[Agent], count: int = 1, *, pool: str | None = None,
              **options: Any) -> PoolInfo:
        """Start ``count`` agents of a type (by name or class) in a pool, and wait until ready.

        ``pool`` defaults to the agent type's name; spawning into an existing pool
        adds agents. ``options`` are :class:`hive_ray.PoolSpec` fields: ``num_cpus``,
        ``num_gpus``, ``memory``, ``resources``, ``policy``, ``max_queue``,
        ``max_attempts``, ``placement``, ``agents_per_host``.
        """
        from hive_ray._errors import UnknownAgentTypeError
        from hive_ray._models import PoolInfo
        from hive_ray._registry import describe

        reference = capabilities = concurrency = None
        try:
            info = describe(agent)
            reference, capabilities, concurrency = info.reference, sorted(info.capabilities), info.concurrency
            agent_type = info.name
        except UnknownAgentTypeError:
            if not isinstance(agent, str):
                raise
            agent_type = agent  # perhaps installed where the orchestrator runs
        spec = {"name": pool or agent_type, "agent_type": agent_type, "count": count, **options}
        return PoolInfo(**self._call("create_pool", spec, reference, capabilities, concurrency))

    def scale(self, pool: str, count: int) -> PoolInfo:
        from hive_ray._models import PoolInfo

        return PoolInfo(**self._call("scale", pool, count))

    def stop(self, pool: str) -> PoolInfo:
        """Stop a pool's agents and remove it; its queued tasks are cancelled."""
        from hive_ray._models import PoolInfo

        return PoolInfo(**self._call("stop_pool", pool))

    def pools(self) -> list[PoolInfo]:
        from hive_ray._models import PoolInfo

        return [PoolInfo(**info) for info in self._call("pools")]

    def pool(self, name: str) -> PoolInfo:
        from hive_ray._models import PoolInfo

        return PoolInfo(**self._call("pool", name))

    def agents(self, pool: str | None = None) -> list[AgentInfo]:
        from hive_ray._models import AgentInfo

        pools = [self.pool(pool)] if pool else self.pools()
        return [AgentInfo(**a.model_dump()) for p in pools for a in p.agents]

    # ------------------------------------------------------------------ tasks
    def _template(self, agent: str | type[Agent] | None, options: dict[str, Any]) -> dict[str, Any]:
        from hive_ray._models import TaskSpec

        if agent is not None and not isinstance(agent, str):
            agent = agent.type_name()
        spec = TaskSpec(agent_type=agent, **options)  # validates; raises ValidationError
        return inject_client_context(spec.template())  # the call's trace, when sampled

    @traced_call("submit")
    def submit(self, agent: str | type[Agent] | None = None, payload: Any = None, **options: Any) -> TaskHandle:
        """Submit one task; returns at once with a handle (the task is accepted and queued).

        ``agent`` is an agent type name (or class); instead give ``capability=`` or
        ``pool=``. Other options: ``priority``, ``timeout``, ``affinity_key``,
        ``idempotency_key``, ``max_attempts``, ``metadata``.
        """
        import uuid

        template = self._template(agent, options)
        task_id = uuid.uuid4().hex
        try:
            accepted = self._call("submit", template, payload, task_id)
        except HiveConnectionError:
            accepted = self._recover_submission(template, payload, task_id)
            if accepted is None:
                raise
        return TaskHandle(self, accepted["task_id"], accepted["pool"])

    @traced_call("run")
    def run(self, agent: str | type[Agent] | None = None, payload: Any = None, *,
            wait_timeout: float | None = None, **options: Any) -> Any:
        """Submit one task and return its result: the fastest path, one orchestrator call.

        The task gets every guarantee a submitted one gets (queueing, supervision,
        a record); only the separate acknowledgement is skipped. Raises the
        task's error like :meth:`TaskHandle.result`; ``wait_timeout`` bounds the wait.
        """
        import uuid

        template = self._template(agent, options)
        task_id = uuid.uuid4().hex
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        try:
            _, answer = self._call("run", template, payload, wait_timeout, task_id)
        except HiveConnectionError:
            # The orchestrator went away mid-call. If it had accepted the task, the
            # journal has it and the restarted orchestrator runs it: wait for it.
            # If not, nothing happened yet: submit it again under the same id.
            if self._recover_submission(template, payload, task_id) is None:
                raise
            answer = self._call("wait", task_id, wait_timeout)
        return self._value(task_id, answer, _remaining(deadline))

    def _recover_submission(self, template: dict[str, Any], payload: Any, task_id: str) -> dict[str, Any] | None:
        from hive_ray._errors import TaskNotFoundError

        try:
            return self._call("task", task_id)
        except TaskNotFoundError:
            pass
        except HiveConnectionError:
            return None
        try:
            return self._call("submit", template, payload, task_id)
        except HiveConnectionError:
            return None

    @traced_call("run_async")
    async def run_async(self, agent: str | type[Agent] | None = None, payload: Any = None, *,
                        wait_timeout: float | None = None, **options: Any) -> Any:
        """:meth:`run` for ``async`` code (and a notebook's top-level ``await``)."""
        template = self._template(agent, options)
        task_id, answer = await self._call_async("run", template, payload, wait_timeout)
        return await self._value_async(task_id, answer)

    async def _call_async(self, method: str, *args: Any) -> Any:
        """An orchestrator call that does not block the running event loop."""
        import asyncio

        channel = self._channel
        if channel is not None and not channel.closed and method in _CHANNEL_METHODS:
            return await asyncio.wrap_future(channel.call_async(method, *args))
        try:
            return await getattr(self._orchestrator, method).remote(*args)
        except Exception as error:  # noqa: BLE001
            raise _unwrap_ray_error(error) from None

    @traced_call("submit_many")
    def submit_many(self, agent: str | type[Agent] | None, payloads: Iterable[Any], *,
                    chunk_size: int = 1000, **options: Any) -> list[TaskHandle]:
        """Submit many tasks in one orchestrator call per ``chunk_size`` payloads."""

        template = self._template(agent, options)
        pending = [self._fire("submit_many", template, chunk) for chunk in _chunks(list(payloads), chunk_size)]
        return [TaskHandle(self, task_id, "") for ref in pending for task_id in self._collect(ref)]

    @traced_call("map")
    def map(self, agent: str | type[Agent] | None, payloads: Iterable[Any], *, chunk_size: int = 512,
            progress: bool | None = None, return_exceptions: bool = False, timeout: float | None = None,
            **options: Any) -> list[Any]:
        """Run one task per payload and return the results in input order.

        Tasks reach the orchestrator ``chunk_size`` at a time (one call per chunk
        each way). A ``tqdm.auto`` progress bar shows by default for more than one
        chunk. A failed task raises its error once every task has ended, unless
        ``return_exceptions`` is True, in which case the error takes its place.
        """
        items = list(payloads)
        template = self._template(agent, options)
        chunks = _chunks(items, chunk_size)
        # One call per chunk: accepted and answered together (far below one Ray call per task).
        calls = [self._fire("run_many", template, chunk, timeout) for chunk in chunks]
        bar = _progress_bar(len(items), progress if progress is not None else len(chunks) > 1)
        results: list[Any] = []
        first_error: BaseException | None = None
        try:
            for pending in calls:
                ids, answers = self._collect(pending)
                for task_id, answer in zip(ids, answers, strict=True):
                    try:
                        results.append(self._value(task_id, answer, timeout))
                    except HiveError as error:
                        first_error = first_error or error
                        results.append(error)
                if bar is not None:
                    bar.update(len(ids))
        finally:
            if bar is not None:
                bar.close()
        if first_error is not None and not return_exceptions:
            raise first_error
        return results

    def _value(self, task_id: str, answer: tuple[str, Any, Any], timeout: float | None = None) -> Any:
        """The result in ``answer``, fetched from the object store if it was kept there."""
        return resolve(task_id, unwrap(task_id, answer),
                       lambda task: self._call("fetch_result", task, timeout=timeout), timeout)

    async def _value_async(self, task_id: str, answer: tuple[str, Any, Any]) -> Any:
        return await resolve_async(task_id, unwrap(task_id, answer),
                                   lambda task: self._call_async("fetch_result", task))

    def _fire(self, method: str, *args: Any) -> Any:
        """Send a call without waiting: a Future on the data plane, else an ObjectRef."""
        channel = self._channel
        if channel is not None and not channel.closed and method in _CHANNEL_METHODS:
            return channel.call_async(method, *args)
        return getattr(self._orchestrator, method).remote(*args)

    def _collect(self, pending: Any, timeout: float | None = None) -> Any:
        from concurrent.futures import Future

        if isinstance(pending, Future):
            from hive_ray._runtime._channel import ChannelClosed

            try:
                return pending.result(timeout)
            except ChannelClosed as closed:
                raise HiveConnectionError(f"lost the orchestrator mid-call: {closed}") from None
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(pending, timeout=timeout)
        except RayActorError as error:
            raise HiveConnectionError(
                f"lost the orchestrator mid-call ({type(error).__name__}); it may be restarting"
            ) from None
        except Exception as error:  # noqa: BLE001
            raise _unwrap_ray_error(error) from None

    def cancel(self, task_id: str) -> TaskRecord:
        from hive_ray._models import TaskRecord

        return TaskRecord(**self._call("cancel", task_id))

    def task(self, task_id: str) -> TaskRecord:
        from hive_ray._models import TaskRecord

        record = self._call("task", task_id)
        if type(record["result"]) is StoredResult:  # kept in the object store: the value, if still there
            with contextlib.suppress(ResultLostError):
                record["result"] = self._value(task_id, ("succeeded", record["result"], None))
        return TaskRecord(**record)

    def tasks(self, *, state: str | None = None, pool: str | None = None, limit: int = 100) -> list[TaskRecord]:
        """Recent tasks, newest first, optionally filtered by state and pool."""
        from hive_ray._models import TaskRecord

        page = self._call("tasks", state, pool, limit, None)
        return [TaskRecord(**record) for record in page["tasks"]]

    def dead_letters(self, limit: int = 100) -> list[TaskRecord]:
        """Tasks that failed after every allowed attempt, newest first."""
        from hive_ray._models import TaskRecord

        return [TaskRecord(**record) for record in self._call("dead_letters", limit)]

    def resubmit(self, task_id: str) -> TaskHandle:
        """Submit an ended (typically dead-lettered) task again, as a new task."""
        accepted = self._call("resubmit", task_id)
        return TaskHandle(self, accepted["task_id"], accepted["pool"])

    def hosts(self, pool: str) -> list[dict[str, Any]]:
        """The host actors of a pool: pid, agents, how many are active or passivated."""
        return self._call("hosts", pool)

    def restarts(self, pool: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Recent agent restarts with their causes (exception, process_killed, oom_killed,
        node_lost, health_check_failed, timeout_unresponsive)."""
        return self._call("restart_events", pool, limit)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        return TaskHandle(self, task_id, "").result(timeout)

    def events(self, after: int = 0, timeout: float = 0.0, task_id: str | None = None) -> dict[str, Any]:
        return self._call("events", after, timeout, task_id)

    def statistics(self) -> dict[str, Any]:
        return self._call("statistics")

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("embedded" if self._owns_ray else "attached")
        return f"<Hive {state} namespace={self.settings.namespace!r}>"


def _ensure_token_auth() -> None:
    """Secure by default: Ray's token authentication, for embedded clusters and the ones
    `hive up` starts. ``RAY_AUTH_MODE=disabled`` opts out.

    Ray reads the mode when it is imported; if it already was (a notebook that ran
    ``import ray`` first), its configuration is refreshed the way Ray itself does.
    """
    import sys

    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:
        try:
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # another Ray version: the variable still reaches new processes
            pass


def get_or_create_orchestrator(settings: Settings, *, detached: bool) -> Any:
    """The orchestrator actor by name, created on first use."""
    import ray

    from hive_ray._runtime._orchestrator import Orchestrator

    try:
        return ray.get_actor(settings.orchestrator_name, namespace=settings.namespace)
    except ValueError:
        pass
    options: dict[str, Any] = {
        "name": settings.orchestrator_name,
        "namespace": settings.namespace,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_concurrency": settings.max_concurrent_calls,
        "max_restarts": -1,
        # On the head node, beside its journal, and never on a worker that may go away.
        "resources": {"node:__internal_head__": 0.001},
    }
    if detached:
        options["lifetime"] = "detached"
    actor_class = ray.remote(Orchestrator)
    return actor_class.options(**options).remote(settings.model_dump(mode="json"))


def local_cluster_address(settings: Settings) -> str | None:
    """The address ``hive up`` recorded, if that cluster's head process still runs."""
    path = Path(settings.state_dir) / CLUSTER_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = recorded.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return recorded.get("address")


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (monotonic), never below a second: a fetch needs one."""
    return None if deadline is None else max(1.0, deadline - time.monotonic())


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or []


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="task", desc="hive map")


def _unwrap_ray_error(error: BaseException) -> BaseException:
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, HiveError) else error

