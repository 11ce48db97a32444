"""All of hive-ray's settings in one place, each documented where it is defined.

Settings come, in increasing precedence, from the defaults below, a YAML
config file (the ``settings:`` section of a ``hive up`` config), and
``HIVE_*`` environment variables (``HIVE_JOURNAL_DIR=/data/hive``). Runtime
classes receive a :class:`Settings` object; they never read the environment
themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ModelPrice(BaseModel):
    """What one model's tokens cost (see the ``llm_prices`` setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_per_million_usd: float = Field(..., ge=0, le=1e6, description="US dollars per million prompt tokens.")
    completion_per_million_usd: float = Field(
        ..., ge=0, le=1e6, description="US dollars per million completion tokens.")


def _default_state_dir() -> Path:
    return Path.home() / ".hive"


class Settings(BaseSettings):
    """Runtime settings. Unknown keys are rejected so typos fail loudly."""

    model_config = SettingsConfigDict(env_prefix="HIVE_", extra="forbid", frozen=True)

    # -- where things are --------------------------------------------------------
    namespace: str = Field("hive", description="Ray namespace of every hive actor.")
    orchestrator_name: str = Field("orchestrator", description="Name of the orchestrator actor.")
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Where `hive up` keeps its API key and the address of the local cluster.",
    )
    journal: bool = Field(
        True,
        description="Write every accepted task to the SQLite journal before submit returns, so "
        "that a restarted orchestrator loses nothing. Off: tasks live in memory only.",
    )
    journal_dir: Path | None = Field(
        None,
        description="Directory of the journal on the head node (one orchestrator per directory). "
        "None: inside this Ray cluster's session directory, per namespace and orchestrator name "
        "(survives orchestrator restarts, not a new cluster); set a path to keep tasks and pools "
        "across cluster restarts too.",
    )
    journal_durability: Literal["normal", "full"] = Field(
        "normal",
        description="What a committed task survives. 'normal': a crash of the orchestrator "
        "process or actor (SQLite WAL with synchronous=NORMAL; a power cut or kernel crash may "
        "lose the last commits, never corrupt the file). 'full': a power cut too "
        "(synchronous=FULL: an fsync per group commit, so each submit waits for the disk; "
        "see docs/ADMIN.md, 'The journal', for the cost).",
    )
    journal_retention_count: int = Field(
        1_000_000, ge=1000, description="Finished tasks kept in the journal, the most recently created."
    )
    journal_retention_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, description="Finished tasks created longer ago than this leave the journal."
    )

    # -- orchestrator ---------------------------------------------------------
    max_concurrent_calls: int = Field(
        10_000, ge=100, description="Calls the orchestrator actor serves at once (waits included)."
    )
    finished_retention_count: int = Field(
        10_000, ge=100, description="Finished tasks kept in the orchestrator's memory, newest first; "
        "older ones are read from the journal (journal_retention_count)."
    )
    finished_retention_seconds: float = Field(
        24 * 3600.0, gt=0, description="Finished tasks older than this are pruned."
    )
    max_result_bytes_in_memory: int = Field(
        64 * 1024, ge=0,
        description="Results whose pickled size is larger travel through Ray's object store (owned by "
        "the orchestrator, fetched by whoever reads them) instead of the task stream and the "
        "orchestrator's memory; so do results that would overfill a data-plane frame, whatever this says.",
    )
    max_stored_result_bytes: int = Field(
        4 * 1024**3, ge=0,
        description="Total size of the results kept in Ray's object store for their tasks; beyond it "
        "the oldest are released, and reading one of those raises ResultLostError. Each also goes "
        "when its task leaves the orchestrator's memory (finished_retention_count).",
    )
    event_buffer: int = Field(10_000, ge=100, description="Recent task events kept for streams.")
    stream_buffer_parts: int = Field(
        256, ge=1, le=100_000,
        description="Unread parts of a streaming task kept for its consumer. When it is full, "
        "the agent's generator waits for the consumer (back-pressure), as long as the consumer "
        "keeps reading (stream_reader_idle_seconds).",
    )
    stream_reader_idle_seconds: float = Field(
        30.0, gt=0,
        description="A stream consumer that has not read for this long no longer holds its agent "
        "back: unread parts beyond stream_buffer_parts are dropped (the task's result keeps them all).",
    )
    llm_prices: dict[str, ModelPrice] = Field(
        default_factory=dict, max_length=10_000,
        description="Prices of models by name, to give each task's token usage a cost_usd: "
        '{"gpt-4o-mini": {"prompt_per_million_usd": 0.15, "completion_per_million_usd": 0.6}}; '
        'the name "*" prices every other model. Unpriced models have no cost (never a guessed one). '
        "As an environment variable: HIVE_LLM_PRICES='{...}' (JSON).",
    )
    max_batch: int = Field(64, ge=1, le=4096, description="Most tasks sent to one agent per Ray call.")
    target_batch_seconds: float = Field(
        0.002, gt=0, description="Tasks shorter than half this are batched."
    )
    # -- the data plane (hive_ray/_runtime/_channel.py; docs/ADMIN.md, "The data plane") --
    data_plane: bool = Field(
        True,
        description="Tasks and driver calls travel over the orchestrator's own authenticated "
        "stream (about 3x faster than Ray calls). False (HIVE_DATA_PLANE=0): everything travels "
        "as Ray calls.",
    )
    data_plane_host: str | None = Field(
        None,
        description="Where the listener for peers on other nodes listens (opened only when such a "
        "peer appears; peers on the orchestrator's node always use loopback). None: Ray's node "
        "address; '0.0.0.0': every interface (peers are given the node address).",
    )
    data_plane_tls: bool | None = Field(
        None,
        description="TLS on the data plane. None: on the listener for other nodes, and on every "
        "listener when Ray's TLS is on (RAY_USE_TLS with its certificates, which are then used); "
        "True: on every listener; False: never (the challenge-response still keeps the token "
        "secret, but tasks then cross the network readable and alterable).",
    )
    data_plane_handshake_timeout_seconds: float = Field(
        10.0, gt=0, description="A data-plane connection must finish TLS and the challenge-response "
        "within this; slower peers are dropped.")
    data_plane_max_handshakes: int = Field(
        64, ge=1, description="Data-plane handshakes in progress at once; more connections are refused.")
    data_plane_write_timeout_seconds: float = Field(
        30.0, gt=0, description="A data-plane peer that reads nothing for this long while megabytes "
        "wait for it is disconnected, so it cannot grow the orchestrator's memory.")
    client_timeout_margin_seconds: float = Field(
        2.0, gt=0, le=60, description="A client call with a timeout gives up this long after it, "
        "even if the orchestrator never answers (the orchestrator answers at the timeout itself).")

    @field_validator("data_plane_host")
    @classmethod
    def _no_off_host(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() == "off":
            raise ValueError("data_plane_host 'off' is replaced by data_plane: false "
                             "(HIVE_DATA_PLANE=0), which sends everything as Ray calls")
        return value

    spawn_wait_seconds: float = Field(
        120.0, gt=0, description="How long spawn/scale wait for agents to be placed; the rest "
        "keep starting in the background (their demand reaches the autoscaler).")
    api_spawn_wait_seconds: float = Field(
        5.0, gt=0, le=600,
        description="How long POST /v1/pools and PATCH /v1/pools/{name} wait for new agents to be "
        "placed before answering (the rest show as starting and keep starting in the background).",
    )
    max_agents_per_pool: int = Field(
        100_000, ge=1, le=1_000_000,
        description="Most agents one pool may have (spawn, scale, autoscaling's max_agents); a "
        "larger request is refused with CapacityError (HTTP 422, also stated in the OpenAPI "
        "document). An admin's limit; whether the cluster can hold a size is checked as well "
        "(max_host_processes).",
    )
    max_host_processes: int | None = Field(
        None, ge=1,
        description="Most agent host processes all pools together may run (dedicated agents "
        "take one each, packed agents share one per agents_per_host). None: half the memory "
        "Ray reports for the cluster at 64 MiB per process. Set it on clusters whose "
        "autoscaler adds nodes, where today's memory is not the limit.",
    )
    autoscale_interval_seconds: float = Field(1.0, gt=0, description="How often autoscaled pools are sized.")
    health_check_interval_seconds: float = Field(5.0, gt=0)
    health_check_timeout_seconds: float = Field(10.0, gt=0)
    host_adoption_timeout_seconds: float = Field(
        10.0, gt=0,
        description="After an orchestrator restart, how long a surviving host may take to be "
        "adopted; one that does not answer in time is stopped, its agents start anew and its "
        "tasks run again elsewhere.",
    )
    orphaned_host_exit_seconds: float = Field(
        30.0, gt=0,
        description="A host whose orchestrator is gone for good (dead and not restarting, e.g. "
        "killed with no_restart) stops its agents and exits within about this long. Hosts are "
        "detached actors so that they survive an orchestrator crash; this keeps them from "
        "outliving it for good.",
    )

    # -- API server -------------------------------------------------------------
    http_host: str = Field("127.0.0.1", description="Listen address; loopback unless you mean it.")
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(9000, ge=1, le=65535)
    api_keys: dict[str, Literal["read", "admin"]] = Field(
        default_factory=dict,
        repr=False,  # secrets: never in a repr, a log line or a traceback
        description="API keys and their scope ('read' or 'admin'), besides the admin key `hive up` "
        "keeps in state_dir/api_key. From the environment as JSON: "
        'HIVE_API_KEYS=\'{"k3y...": "read"}\'. Keys are compared in constant time and never logged.',
    )
    api_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    api_max_wait_seconds: float = Field(
        30.0, gt=0, le=300, description="Longest `wait` a task submission may ask for."
    )
    api_request_timeout_seconds: float = Field(
        90.0, gt=0,
        description="Serve's end-to-end request timeout; above api_max_wait_seconds and "
        "api_stream_max_seconds so that waits and streams end on their own terms.",
    )
    api_stream_max_seconds: float = Field(
        60.0, gt=0,
        description="An event stream (SSE or gRPC) ends after this long; clients resume from "
        "the last event id (EventSource does so by itself).",
    )
    api_replicas: int = Field(1, ge=1, le=64, description="Replicas of the API deployment.")
    # Measured on 2 cores (perf/bench_api.py): with the Serve default of 5, 32 clients
    # queue in the proxy and p95 triples. With 100, 200 clients back to back made the
    # proxy's router retry with backoff: 55 submissions/s, p95 11 to 22 s; with 1000 the
    # async replica takes them all: 185/s, p95 1.5 s. The queue bound sheds load with
    # 503 instead of letting latency grow without limit.
    api_max_ongoing_requests: int = Field(
        1000, ge=1, description="Requests one API replica handles at once (Serve's max_ongoing_requests)."
    )
    api_max_queued_requests: int = Field(
        1000, ge=-1, description="Requests waiting for a replica before Serve answers 503 (-1: no bound)."
    )
    api_pool_cache_seconds: float = Field(
        1.0, ge=0,
        description="How long a replica serves pool lists from its cache; its own pool changes "
        "invalidate the cache at once, other replicas' changes show within this time.",
    )
    api_cache_entries: int = Field(
        10_000, ge=0, description="Finished tasks' status, and idempotency keys, a replica remembers."
    )

    # -- tracing and the performance analyzer ------------------------------------------
    # Standard OTEL_* variables apply on top of these (the OpenTelemetry SDK reads them):
    # OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER(_ARG) (replaces tracing_sample_ratio), and
    # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, which also exports every span over OTLP/HTTP.
    tracing: bool = Field(
        False,
        description="Trace tasks end to end (client or API -> orchestrator -> agent -> "
        "sub-tasks) and feed the performance analyzer. HIVE_TRACING=1 turns it on; the "
        "orchestrator passes it on to every agent host.",
    )
    # Measured with perf/bench_tracing.py: unsampled tasks carry no context and cost
    # nothing downstream, so 1% keeps tracing below the noise while still giving the
    # analyzer hundreds of traces a minute on a busy system.
    tracing_sample_ratio: float = Field(
        0.01, ge=0.0, le=1.0,
        description="Share traced of client calls and API requests (decided where the call "
        "is made) and of tasks outside a sampled trace (the orchestrator decides for each); "
        "a sampled trace is followed downstream.",
    )
    tracing_export_dir: Path | None = Field(
        None,
        description="Also write every finished span as JSON lines into this directory, one "
        "file per process (tests, offline analysis). Must be reachable from every node.",
    )
    tracing_feed_analyzer: bool = Field(
        True, description="Send span durations to the analyzer actor (`hive perf report`)."
    )
    tracing_flush_seconds: float = Field(
        1.0, gt=0, le=60, description="How often each process ships its finished spans."
    )
    tracing_max_queued_spans: int = Field(
        100_000, ge=100,
        description="Finished spans a process buffers between shipments; more are dropped "
        "(and counted) rather than slowing tasks down.",
    )
    analyzer: bool | None = Field(
        None,
        description="Run the performance analyzer actor beside the orchestrator. None: when "
        "tracing is on (`hive perf report` starts it on demand too).",
    )
    analyzer_name: str = Field("analyzer", description="Name of the analyzer actor.")
    analyzer_window_seconds: float = Field(
        600.0, gt=0, description="Latency statistics cover this much recent time."
    )
    analyzer_slice_seconds: float = Field(
        5.0, gt=0, description="Resolution of the analyzer's time series (one chart point)."
    )
    analyzer_sample_seconds: float = Field(
        10.0, gt=0, description="How often the analyzer measures memory and queue depths."
    )
    perf_slo_p95_seconds: float = Field(
        0.050, gt=0, description="p95 objective of API requests, for the analyzer's advice."
    )
    perf_memory_budget_bytes: int | None = Field(
        None, ge=1, description="Memory budget of each hive process, for leak forecasts."
    )

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None) -> Settings:
        """Defaults < ``overrides`` (a config file's ``settings:``) < ``HIVE_*`` variables."""
        import os

        values = dict(overrides or {})
        prefix = "HIVE_"
        for key in cls.model_fields:
            if f"{prefix}{key.upper()}" in os.environ:
                values.pop(key, None)  # the environment wins; pydantic-settings reads it
        return cls(**values)
