"""Settings: the one registry of the environment variables rectrain reads.

:class:`Settings` (the service: API, dispatcher, runners) and :class:`ClientSettings`
(the CLI talking to an API) each name every variable with its default and one line
(``Field(description=...)``); a field `x` is read from ``RECTRAIN_X`` (``env_prefix``) but
for REDIS_URL and RAY_ADDRESS. :func:`env_var` gives a field's variable; the launcher
builds its runners' environment from every field (``services.launch_env.settings_env``);
:func:`settings_table` renders the README's settings
table (``python -m services.settings`` rewrites it; a test fails when it is stale).
Production refuses the dev token, placeholder or short tokens, and embedded Redis.
"""

from __future__ import annotations

import re
import sys
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services import keys

DEV_TOKEN = "rectrain-dev-token"
DEV_OWNER = "dev"
MIN_PRODUCTION_TOKEN_CHARS = 24
_PLACEHOLDER_TOKENS = {DEV_TOKEN, "secret", "token", "dev", "test", "password", "example", "xxx"}
_PLACEHOLDER_PARTS = ("changeme", "change-me", "change_me", "changethis", "placeholder", "replace-me")
_OWNER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def parse_tokens(raw: str) -> dict[str, str]:
    """``"tok1:alice, tok2:bob"`` -> ``{"tok1": "alice", "tok2": "bob"}``."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, owner = item.rpartition(":")
        token, owner = token.strip(), owner.strip()
        if not sep or not token or not owner:
            raise ValueError(f"RECTRAIN_API_TOKENS: entry {item[:4]}... is not 'token:owner'")
        if not _OWNER_RE.match(owner):
            raise ValueError(f"RECTRAIN_API_TOKENS: owner {owner!r} must match {_OWNER_RE.pattern}")
        if token in out and out[token] != owner:
            raise ValueError("RECTRAIN_API_TOKENS: one token is given to two owners")
        out[token] = owner
    return out


class WorkerGroupShape(BaseModel):
    """One autoscaling worker group at its maximum: ``replicas`` pods of this size."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, description="the group's maxReplicas")
    cpus: float = Field(ge=0, description="Ray CPUs per pod")
    gpus: float = Field(0.0, ge=0, description="Ray GPUs per pod")
    memory_gb: float = Field(ge=0, description="Ray memory per pod (GB)")


_WORKER_GROUPS = TypeAdapter(list[WorkerGroupShape])


class Settings(BaseSettings):
    """The control plane's configuration: one field per environment variable (see :func:`env_var`)."""

    model_config = SettingsConfigDict(env_prefix="RECTRAIN_", extra="ignore", populate_by_name=True)

    env: Literal["development", "production"] = Field(
        "development",
        description="development | production (production refuses the dev token, placeholder or short tokens, and embedded Redis)",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "redis_url"),
        description="the Redis to use; unset: an embedded redis-server with its data in RECTRAIN_DATA_DIR",
    )
    trainer_redis_url: str | None = Field(
        None,
        description="the Redis URL as trainers must spell it, when it differs from the API's (another network namespace)",
    )
    api_tokens: str | None = Field(
        None,
        description="`token:owner,token:owner`; unset in development: the dev token for owner `dev`",
    )
    data_dir: Path = Field(
        Path(".rectrain"),
        description="run directories, launcher logs, the embedded Redis",
    )
    storage_uri: str | None = Field(
        None,
        description="job checkpoints, specs and results (a directory or s3:// gs:// URI); unset: the data directory",
    )
    tensorboard: bool = Field(
        False,
        description="jobs that leave `metrics.tensorboard` unset also write TensorBoard event files to their run directory",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="jobs that leave `metrics.mlflow` unset also log to this MLflow tracking server (a study: one parent run, a child per run); needs the `mlflow` extra",
    )
    mlflow_experiment: str = Field(
        "rectrain",
        min_length=1,
        description="the MLflow experiment of RECTRAIN_MLFLOW_TRACKING_URI's runs",
    )
    ray_address: str | None = Field(
        None,
        validation_alias=AliasChoices("RAY_ADDRESS", "ray_address"),
        description="a Ray cluster (its dashboard address, `http://head:8265`): jobs go through the Ray Jobs API; unset: `rectrain serve` starts a local Ray head",
    )
    launcher: Literal["auto", "local", "ray"] = Field(
        "auto",
        description="auto (`ray` when RAY_ADDRESS is set) | local (a `rectrain run` subprocess per job) | ray",
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="larger request bodies get 413",
    )
    heartbeat_interval_s: float = Field(
        keys.HEARTBEAT_INTERVAL_S,
        gt=0,
        description="how often a job's runner refreshes its heartbeat",
    )
    heartbeat_ttl_s: float = Field(
        keys.HEARTBEAT_TTL_S,
        gt=0,
        description="a runner silent this long is presumed dead (the reaper fails or re-adopts its job)",
    )
    control_loops: Literal["in-process", "off"] = Field(
        "in-process",
        description="where the dispatcher, reaper and study reconciler run: `in-process` (in the API process) | `off` (not in the API: a `rectrain worker` runs them; `rectrain serve` and the Helm chart do this)",
    )
    reaper_interval_s: float = Field(
        keys.REAPER_INTERVAL_S,
        gt=0,
        description="how often the reaper looks for jobs whose heartbeat expired",
    )
    cancel_grace_s: float = Field(
        30.0,
        gt=0,
        description="after a cancel (or the wall-clock limit), SIGKILL follows SIGTERM after this long",
    )
    sse_keepalive_s: float = Field(
        15.0,
        gt=0,
        description="comment lines keep idle event streams open this often",
    )
    study_max_runs: int = Field(
        500,
        ge=1,
        description="per owner: runs of unfinished studies",
    )
    study_reconcile_interval_s: float = Field(
        keys.STUDY_RECONCILE_INTERVAL_S,
        gt=0,
        description="how often the control loops reconcile active studies",
    )
    study_poll_s: float = Field(
        keys.STUDY_POLL_S,
        gt=0,
        description="how often a study's event stream looks for changes",
    )
    warm_studies: bool = Field(
        True,
        description="study runs execute one after another on warm worker groups (trainer/warm.py) instead of one Ray Train fit each (local launcher, or a Ray whose GCS address is known)",
    )
    # Queue, capacity and per-owner limits (services.queue, services.capacity).
    capacity_cpus: float | None = Field(
        None,
        ge=0,
        description="the cluster's CPUs for jobs when Ray's own figure is not the right one; unset: from Ray (or this machine)",
    )
    capacity_gpus: float | None = Field(
        None,
        ge=0,
        description="the cluster's GPUs for jobs; unset: from Ray (or this machine)",
    )
    capacity_memory_gb: float | None = Field(
        None,
        ge=0,
        description="the cluster's memory for jobs (GB); unset: from Ray (or this machine)",
    )
    autoscaling_shape: str | None = Field(
        None,
        description='the autoscaling Ray cluster\'s worker groups at their maximum, JSON: `[{"replicas": 8, "cpus": 8, "gpus": 1, "memory_gb": 32}]` (replicas = maxReplicas; the Helm chart renders it); set: capacity is their sum and jobs that do not fit the live nodes ask the Ray autoscaler for their resources',
    )
    ray_gcs_address: str | None = Field(
        None,
        description="the Ray head's GCS address (`host:port`): the dispatcher asks the autoscaler through it (unset: RAY_ADDRESS's host, port 6379), and warm study runs join it with the Ray Jobs launcher (unset: they run cold there); `rectrain serve` sets it for its own head",
    )
    reserve_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs the scheduler never hands out",
    )
    reserve_memory_gb: float = Field(
        2.0,
        ge=0,
        description="memory the scheduler never hands out: the service itself",
    )
    worker_overhead_gb: float = Field(
        0.75,
        ge=0,
        description="memory per Ray Train worker on top of the spec's embedding estimate",
    )
    driver_overhead_gb: float = Field(
        0.5,
        ge=0,
        description="memory of a job's driver",
    )
    max_running_per_owner: int = Field(
        0,
        ge=0,
        description="jobs one owner may have starting/running (0: no limit)",
    )
    max_queued_per_owner: int = Field(
        200,
        ge=1,
        description="jobs one owner may have queued; more get 429",
    )
    dispatch_interval_s: float = Field(
        keys.DISPATCH_INTERVAL_S,
        gt=0,
        description="how often the dispatcher looks at the queue",
    )
    trainer_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU niceness of local trainers and of the Ray head `rectrain serve` starts (0: off)",
    )
    # ---- limits and safety (README "Limits and safety")
    data_roots: str | None = Field(
        None,
        description="comma-separated prefixes a job's data.path must lie under (dirs, file://, s3://bucket/prefix/, gs://...); unset: RECTRAIN_DATA_DIR/datasets",
    )
    checkpoint_secret: str | None = Field(
        None,
        description="key that signs the checkpoints jobs write (HMAC of their content hashes); the same on the API and every Ray node; unset: a key file per user (~/.cache/rectrain/checkpoint.key)",
    )
    allow_foreign_checkpoints: bool = Field(
        False,
        description='true: training.init_from.checkpoint and rectrain export also read checkpoints this service did not sign (with readers that run no code; README "Foreign checkpoints")',
    )
    max_workers: int = Field(
        16,
        ge=1,
        description="most scaling.num_workers one job may ask for",
    )
    max_cpus_per_worker: float = Field(
        32.0,
        gt=0,
        description="most scaling.cpus_per_worker",
    )
    max_memory_per_worker_gb: float = Field(
        64.0,
        gt=0,
        description="most scaling.memory_per_worker_gb",
    )
    max_passes: int = Field(
        100,
        ge=1,
        description="most training.num_passes",
    )
    max_wall_seconds: int = Field(
        3 * 86400,
        ge=1,
        description="most training.max_wall_seconds, and the limit of jobs that set none",
    )
    sse_max_streams: int = Field(
        256,
        ge=1,
        description="open event streams on one API process; more get 429",
    )
    sse_max_streams_per_owner: int = Field(
        16,
        ge=1,
        description="open event streams per owner; more get 429",
    )
    redis_max_connections: int = Field(
        64,
        ge=4,
        description="the API's Redis pool; a request beyond it waits for a free connection",
    )
    redis_pool_timeout_s: float = Field(
        5.0,
        gt=0,
        description="how long it waits before answering 503",
    )
    stream_ticket_ttl_s: int = Field(
        60,
        ge=5,
        le=3600,
        description="lifetime of an SSE stream ticket (one job or study, one owner)",
    )
    metrics_token: str | None = Field(
        None,
        description="when set, /metrics needs this bearer token",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve /metrics on this port instead of the API port",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="the address RECTRAIN_METRICS_PORT binds",
    )
    # The interpreter that runs the trainer (local launcher) and the module it runs;
    # tests point trainer_module at a stand-in.
    trainer_python: str = Field(
        sys.executable,
        description="the interpreter that runs local trainers (default: the API's)",
    )
    trainer_module: str = Field(
        "trainer.cli",
        description="the module local trainers run (tests point it at a stand-in)",
    )
    api_host: str = Field(
        "127.0.0.1",
        description="the address `rectrain serve` binds (`--host` overrides it)",
    )
    api_port: int = Field(
        8000,
        ge=1,
        le=65535,
        description="the port `rectrain serve` binds (`--port` overrides it)",
    )
    # The interpreter on the Ray cluster's head that runs the job's driver.
    ray_python: str = Field(
        "python",
        description="the interpreter on the Ray head that runs a job's driver",
    )

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        tokens = parse_tokens(self.api_tokens or "")
        if self.storage_uri:
            from trainer.storage import StorageError, check_uri

            try:
                check_uri(self.storage_uri, "RECTRAIN_STORAGE_URI")
            except StorageError as e:
                raise ValueError(str(e)) from None
        if self.mlflow_tracking_uri:
            try:
                import mlflow  # noqa: F401
            except ImportError:
                raise ValueError(
                    "RECTRAIN_MLFLOW_TRACKING_URI is set but the mlflow package is not installed: "
                    "pip install 'rectrain[mlflow]', or unset it"
                ) from None
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError("RECTRAIN_HEARTBEAT_TTL_S must exceed RECTRAIN_HEARTBEAT_INTERVAL_S")
        try:
            self.data_root_list  # noqa: B018 - validates RECTRAIN_DATA_ROOTS
        except ValueError as e:
            raise ValueError(f"RECTRAIN_DATA_ROOTS: {e}") from None
        if self.autoscaling_shape is not None:
            self.worker_groups  # noqa: B018 - validates RECTRAIN_AUTOSCALING_SHAPE
            if not self.gcs_address:
                raise ValueError(
                    "RECTRAIN_AUTOSCALING_SHAPE needs RAY_ADDRESS or RECTRAIN_RAY_GCS_ADDRESS "
                    "(the autoscaling Ray cluster the dispatcher asks for resources)"
                )
        if self.effective_launcher == "ray" and not self.ray_address:
            raise ValueError("RECTRAIN_LAUNCHER=ray needs RAY_ADDRESS (the Ray dashboard URL)")
        if self.env == "production":
            if not tokens:
                raise ValueError("RECTRAIN_API_TOKENS: required when RECTRAIN_ENV=production")
            for token, owner in tokens.items():
                low = token.lower()
                if (
                    low in _PLACEHOLDER_TOKENS
                    or any(p in low for p in _PLACEHOLDER_PARTS)
                    or len(token) < MIN_PRODUCTION_TOKEN_CHARS
                ):
                    raise ValueError(
                        f"RECTRAIN_API_TOKENS: the token of owner {owner!r} is a placeholder or "
                        f"shorter than {MIN_PRODUCTION_TOKEN_CHARS} characters; generate one with "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                    )
            if self.metrics_token is not None and len(self.metrics_token) < MIN_PRODUCTION_TOKEN_CHARS:
                raise ValueError(
                    f"RECTRAIN_METRICS_TOKEN: shorter than {MIN_PRODUCTION_TOKEN_CHARS} characters"
                )
            if not self.redis_url:
                raise ValueError("REDIS_URL: required when RECTRAIN_ENV=production (no embedded Redis)")
        return self

    @cached_property
    def tokens(self) -> dict[str, str]:
        """token -> owner; the dev token alone when none are configured in development."""
        tokens = parse_tokens(self.api_tokens or "")
        if not tokens and self.env == "development":
            tokens = {DEV_TOKEN: DEV_OWNER}
        return tokens

    @property
    def data_root_list(self) -> list[str]:
        """Allowed data roots, normalised (default: ``data_dir/datasets``)."""
        from trainer.data_roots import parse_roots

        raw = self.data_roots or str(Path(self.data_dir).resolve() / "datasets")
        return parse_roots(raw)

    @cached_property
    def worker_groups(self) -> list[WorkerGroupShape]:
        """RECTRAIN_AUTOSCALING_SHAPE parsed (empty when unset)."""
        if self.autoscaling_shape is None:
            return []
        try:
            groups = _WORKER_GROUPS.validate_json(self.autoscaling_shape)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ValueError(
                f"RECTRAIN_AUTOSCALING_SHAPE: {where + ': ' if where else ''}{err['msg']} "
                '(expected JSON like [{"replicas": 8, "cpus": 8, "gpus": 1, "memory_gb": 32}])'
            ) from None
        if not groups:
            raise ValueError("RECTRAIN_AUTOSCALING_SHAPE: no worker group (unset it when nothing autoscales)")
        return groups

    @property
    def gcs_address(self) -> str | None:
        """The GCS address: RECTRAIN_RAY_GCS_ADDRESS, RAY_ADDRESS when it is one, else
        RAY_ADDRESS's (dashboard URL's) host at Ray's default GCS port 6379."""
        if self.ray_gcs_address:
            return self.ray_gcs_address
        if not self.ray_address:
            return None
        if "://" not in self.ray_address:
            return self.ray_address
        host = urlsplit(self.ray_address).hostname
        return f"{host}:6379" if host else None

    @property
    def effective_launcher(self) -> Literal["local", "ray"]:
        if self.launcher == "auto":
            return "ray" if self.ray_address else "local"
        return self.launcher

    @property
    def effective_storage_uri(self) -> str:
        """Where job storage lives: RECTRAIN_STORAGE_URI, else the data directory."""
        return self.storage_uri or str(Path(self.data_dir).resolve())

    @property
    def uses_dev_token(self) -> bool:
        return DEV_TOKEN in self.tokens


def get_settings() -> Settings:
    return Settings()


def settings_or_errors(command: str) -> Settings | None:
    """The service's settings for a long-running command (``rectrain serve``, ``rectrain
    worker``), or None after printing each refused setting as one line on stderr."""
    try:
        return Settings()
    except ValidationError as e:
        for err in e.errors():
            print(f"rectrain {command}: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return None


class ClientSettings(BaseSettings):
    """What the CLI's client commands (``rectrain submit | jobs | follow | study ...``) read."""

    model_config = SettingsConfigDict(env_prefix="RECTRAIN_", extra="ignore", populate_by_name=True)

    api_url: str = Field(
        "http://127.0.0.1:8000",
        description="the API the CLI's client commands talk to",
    )
    token: str = Field(
        DEV_TOKEN,
        description="the bearer token the CLI sends (default: the development token)",
    )


def env_var(model: type[BaseSettings], name: str) -> str:
    """The environment variable of a settings field: ``RECTRAIN_<NAME>``, or the first
    alias of the few that keep their conventional names (REDIS_URL, RAY_ADDRESS)."""
    alias = model.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"{model.model_config.get('env_prefix', '')}{name.upper()}"


def _default_text(model: type[BaseSettings], name: str) -> str:
    f = model.model_fields[name]
    if name == "trainer_python":
        return "the API's interpreter"
    d = f.default
    if d is None:
        return "unset"
    if isinstance(d, float) and d.is_integer():
        d = int(d)
    return f"`{d}`"


SETTINGS_TABLE_BEGIN = "<!-- settings-table: generated by `python -m services.settings`; do not edit -->"
SETTINGS_TABLE_END = "<!-- settings-table end -->"


def settings_table() -> str:
    """The README's table of every variable: name, default, one line."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for model in (Settings, ClientSettings):
        for name, f in model.model_fields.items():
            desc = (f.description or "").replace("|", "\\|")
            rows.append(f"| `{env_var(model, name)}` | {_default_text(model, name)} | {desc} |")
    return "\n".join(rows)


def update_readme(path: Path) -> bool:
    """Rewrite the generated table between its markers in ``path``; True if it changed."""
    text = path.read_text()
    head, sep, rest = text.partition(SETTINGS_TABLE_BEGIN)
    _, sep2, tail = rest.partition(SETTINGS_TABLE_END)
    if not sep or not sep2:
        raise SystemExit(f"{path}: no settings-table markers")
    new = f"{head}{SETTINGS_TABLE_BEGIN}\n{settings_table()}\n{SETTINGS_TABLE_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    readme = Path(__file__).resolve().parents[1] / "README.md"
    print(f"{readme}: {'updated' if update_readme(readme) else 'up to date'}")
