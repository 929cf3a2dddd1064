"""docker-compose.yml and the GPU override, validated by Debian's docker-compose
(`docker-compose config` parses, interpolates and schema-checks them offline; no
Docker engine is contacted)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_helpers import REPO

COMPOSE = "/usr/bin/docker-compose"
BASE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / ".env.example"


@pytest.fixture(autouse=True, scope="module")
def _docker_compose_installed():
    if not Path(COMPOSE).exists():
        pytest.fail("Debian docker-compose not installed: run scripts/setup-test-tools.sh")


def _clean_env() -> dict[str, str]:
    # Only what the .env file sets may shape the result.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def compose_config(
    tmp_path: Path, *files: Path, env_file: Path | None = None, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    if env_file is None:
        env_file = tmp_path / ".env"
        shutil.copy(ENV_EXAMPLE, env_file)
    cmd = [COMPOSE, "--project-directory", str(REPO), "--env-file", str(env_file)]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["config"]
    env = _clean_env() | (extra_env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def config(tmp_path: Path, *files: Path, **kw) -> dict:
    r = compose_config(tmp_path, *files, **kw)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory) -> dict:
    return config(tmp_path_factory.mktemp("compose"), BASE)


@pytest.fixture(scope="module")
def gpu_cfg(tmp_path_factory) -> dict:
    return config(tmp_path_factory.mktemp("compose-gpu"), BASE, GPU)


def test_compose_validates(base_cfg):
    cfg = base_cfg
    assert set(cfg["services"]) == {"redis", "ray-head", "ray-worker", "api"}
    assert set(cfg["volumes"]) >= {"redis-data", "rectrain-data"}


def test_gpu_override_validates(gpu_cfg):
    cfg = gpu_cfg
    w = cfg["services"]["ray-worker"]
    [dev] = w["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert str(dev["count"]) == "all"
    for name in ("ray-head", "ray-worker", "api"):
        s = cfg["services"][name]
        assert s["image"].endswith(":0.1.0-cuda"), name
        assert s["build"]["dockerfile"] == "deploy/Dockerfile.cuda", name
    assert cfg["services"]["ray-head"]["environment"]["RAY_NUM_GPUS"] == "0"
    assert (
        "deploy" not in cfg["services"]["ray-head"]
        or "resources" not in cfg["services"]["ray-head"]["deploy"]
    )


def test_gpu_workers_never_share_a_gpu(tmp_path, gpu_cfg, base_cfg):
    """Default: one worker container with every GPU (replicas 1: Docker would give each
    replica GPUs 0..N-1). The per-gpu profile: workers pinned by device_ids, distinct,
    otherwise the same as the base file's ray-worker."""
    w = gpu_cfg["services"]["ray-worker"]
    assert w["deploy"]["replicas"] == 1
    # the pinned workers start only with their profile
    assert all(s.get("profiles") == ["per-gpu"] for n, s in gpu_cfg["services"].items() if "-gpu" in n)
    assert "profiles" not in w
    cfg = config(tmp_path, BASE, GPU, extra_env={"COMPOSE_PROFILES": "per-gpu", "RAY_GPU_WORKERS": "0"})
    assert cfg["services"]["ray-worker"]["deploy"]["replicas"] == 0
    pinned = {n: s for n, s in cfg["services"].items() if n.startswith("ray-worker-gpu")}
    ids = []
    base_w = base_cfg["services"]["ray-worker"]
    for name, s in sorted(pinned.items()):
        [dev] = s["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in dev and dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
        ids += dev["device_ids"]
        assert s["command"] == base_w["command"] and s["environment"] == base_w["environment"], name
        assert s["image"].endswith(":0.1.0-cuda") and s["volumes"] == base_w["volumes"], name
    assert ids == ["0", "1", "2", "3"]
    cfg = config(tmp_path, BASE, GPU, extra_env={"COMPOSE_PROFILES": "per-gpu", "RAY_WORKER_GPU2": "6"})
    assert cfg["services"]["ray-worker-gpu2"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] == ["6"]


def test_gpu_count_from_env(tmp_path):
    env_file = tmp_path / "gpu.env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace("RAY_GPUS_PER_WORKER=all", "RAY_GPUS_PER_WORKER=1"))
    cfg = config(tmp_path, BASE, GPU, env_file=env_file)
    [dev] = cfg["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert str(dev["count"]) == "1"


def test_redis_persists_with_aof_and_is_healthchecked(base_cfg):
    r = base_cfg["services"]["redis"]
    cmd = r["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--dir") + 1] == "/data"
    assert any(v.startswith("redis-data:/data") for v in r["volumes"])
    assert r["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    image, tag = r["image"].rsplit(":", 1)
    assert image == "redis" and tag != "latest"
    assert "ports" not in r  # not published on the host


def test_api_settings_and_health(base_cfg):
    cfg = base_cfg
    api = cfg["services"]["api"]
    env = api["environment"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["RAY_ADDRESS"] == "http://ray-head:8265"
    assert env["RECTRAIN_ENV"] == "production"
    assert env["RECTRAIN_DATA_DIR"] == "/data"
    assert env["RECTRAIN_API_TOKENS"] == "change-me-alice-token:alice,change-me-bob-token:bob"
    assert api["command"] == ["api"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "ray-head": {"condition": "service_healthy"},
    }
    assert [str(p) for p in api["ports"]] == ["127.0.0.1:8000:8000/tcp"]


def test_ray_cluster_services(base_cfg):
    cfg = base_cfg
    head, worker = cfg["services"]["ray-head"], cfg["services"]["ray-worker"]
    assert head["command"] == ["ray-head"]
    assert "/api/version" in " ".join(head["healthcheck"]["test"])  # the dashboard / Jobs API is up
    assert worker["command"] == ["ray-worker"]
    assert worker["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    # scalable: `docker compose up --scale ray-worker=N` needs no fixed name and no host port
    assert "container_name" not in worker
    assert "ports" not in worker
    for s in (head, worker, cfg["services"]["api"]):
        # one shared volume is every container's job storage (RECTRAIN_STORAGE_URI)
        assert s["environment"]["RECTRAIN_STORAGE_URI"] == "/data/storage"
        assert any(
            str(v.get("source", v) if isinstance(v, dict) else v).startswith("rectrain-data")
            for v in s["volumes"]
        )
    for s in (head, worker):
        assert s["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert s["shm_size"] not in (None, "", 0)
    # every rectrain service builds the same CPU image
    imgs = {cfg["services"][n]["image"] for n in ("api", "ray-head", "ray-worker")}
    assert imgs == {"rectrain:0.1.0-cpu"}
    for n in ("api", "ray-head", "ray-worker"):
        assert cfg["services"][n]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    # only loopback ports on the host
    for n, s in cfg["services"].items():
        for p in s.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), (n, p)


def test_tokens_are_required(tmp_path):
    env_file = tmp_path / "no-tokens.env"
    env_file.write_text(
        "".join(
            line + "\n"
            for line in ENV_EXAMPLE.read_text().splitlines()
            if not line.startswith("RECTRAIN_API_TOKENS=")
        )
    )
    r = compose_config(tmp_path, BASE, env_file=env_file)
    assert r.returncode != 0
    assert "RECTRAIN_API_TOKENS" in r.stderr


def test_env_example_has_no_secrets():
    text = ENV_EXAMPLE.read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#") and "=" in line
    )
    for pair in values["RECTRAIN_API_TOKENS"].split(","):
        token, owner = pair.split(":")
        assert token.startswith("change-me"), token
    for key, value in values.items():
        if any(w in key for w in ("PASSWORD", "SECRET", "KEY")):
            assert value == "", key
    # every variable the compose files use is explained in .env.example
    import re

    used = set()
    for f in (BASE, GPU):
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", f.read_text()))
    assert used <= set(values), sorted(used - set(values))


def test_compose_rejects_unknown_keys(tmp_path):
    """The validator is real: a typo'd key fails."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        BASE.read_text().replace(
            '    healthcheck:\n      test: ["CMD", "redis-cli", "ping"]',
            '    healthchek:\n      test: ["CMD", "redis-cli", "ping"]',
            1,
        )
    )
    assert "healthchek" in bad.read_text()
    r = compose_config(tmp_path, bad)
    assert r.returncode != 0
    assert "healthchek" in r.stderr
