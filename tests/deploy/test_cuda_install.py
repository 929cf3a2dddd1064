"""The CUDA install without a GPU (issue 16.1, 16.2, 16.7): one cu130 triple in
setup.sh, pyproject and the CUDA image, its resolution for Linux x86-64, the set-up
script's device choice / variant switch / loud failure, and the GPU smoke script's
clean skips. setup-lib.sh's functions run against a stand-in ``torch`` package (the
set-up logic is what is tested, not torch)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import check_cuda_install as cci  # noqa: E402

LIB = REPO / "scripts" / "setup-lib.sh"


def _lib(call: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f". {LIB}; {call}"],
        capture_output=True,
        text=True,
        env={"PATH": env.pop("PATH"), **env},
    )


def _fake_torch(tmp: Path, cuda: str | None, available: bool) -> Path:
    pkg = tmp / "site" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import types\n"
        f"__version__ = '2.13.0+{'cu130' if cuda else 'cpu'}'\n"
        f"version = types.SimpleNamespace(cuda={cuda!r})\n"
        f"cuda = types.SimpleNamespace(is_available=lambda: {available})\n"
    )
    py = tmp / "python"
    py.write_text(f'#!/bin/sh\nPYTHONPATH={tmp / "site"} exec {sys.executable} "$@"\n')
    py.chmod(0o755)
    return py


# --------------------------------------------------------------------------- 16.1


def test_cuda_triple_is_one_variant_everywhere():
    assert cci.consistency() == []
    assert cci.PINS == {"torch": "2.13.0", "fbgemm-gpu": "1.8.0", "torchrec": "1.8.0"}


def test_consistency_names_the_file_that_disagrees(tmp_path):
    for rel in (
        "pyproject.toml",
        "requirements-torchrec.txt",
        "scripts/setup-lib.sh",
        "deploy/Dockerfile.cuda",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    docker = tmp_path / "deploy" / "Dockerfile.cuda"
    text = docker.read_text().replace("whl/cu130", "whl/cu128").replace("cuda:13.0.0-", "cuda:12.8.1-")
    docker.write_text(text)
    errs = cci.consistency(tmp_path)
    assert any("Dockerfile.cuda: TORCH_INDEX_URL" in e and "cu128" in e for e in errs), errs
    assert any("CUDA_IMAGE is not a CUDA 13.0 image" in e for e in errs), errs


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _pypi_reachable(), reason="pypi.org unreachable: resolution needs the index")
def test_cuda_pins_resolve_for_linux_x86_64():
    # --no-deps for the top-level pins: torch's NVIDIA wheels are not all reachable from
    # every build box; their CUDA version is read from torch's metadata instead
    assert cci.resolution(["https://pypi.org/simple"], "3.11", full=False) == []


# --------------------------------------------------------------------------- 16.2


@pytest.mark.parametrize(
    ("value", "gpu", "want"),
    [
        ("cuda", False, "cuda"),
        ("cpu", True, "cpu"),
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),
        (None, True, "cuda"),
    ],
)
def test_rectrain_device_choice(tmp_path, value, gpu, want):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    if gpu:
        smi = bin_ / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin"}
    if value:
        env["RECTRAIN_DEVICE"] = value
    r = _lib("rectrain_device", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == want


def test_rectrain_device_refuses_unknown_value():
    r = _lib("rectrain_device", {"PATH": "/usr/bin:/bin", "RECTRAIN_DEVICE": "gpu"})
    assert r.returncode == 2
    assert "RECTRAIN_DEVICE='gpu' is not one of cuda, cpu, auto" in r.stderr


@pytest.mark.parametrize(
    ("cuda", "device", "mismatch"),
    [(None, "cuda", True), ("13.0", "cpu", True), (None, "cpu", False), ("13.0", "cuda", False)],
)
def test_variant_switch_reinstalls(tmp_path, cuda, device, mismatch):
    py = _fake_torch(tmp_path, cuda, available=False)
    r = _lib(f"installed_variant {py}; variant_mismatch {py} {device}", {"PATH": "/usr/bin:/bin"})
    assert r.stdout.strip() == ("cuda" if cuda else "cpu")
    assert (r.returncode == 0) is mismatch


def test_cuda_asked_but_unavailable_fails_loudly(tmp_path):
    py = _fake_torch(tmp_path, "13.0", available=False)
    r = _lib(f"check_device {py} cuda", {"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert "RECTRAIN_DEVICE=cuda but torch 2.13.0+cu130 CUDA 13.0 sees no GPU" in r.stderr
    assert "R580" in r.stderr
    assert _lib(f"check_device {py} cpu", {"PATH": "/usr/bin:/bin"}).returncode == 0


def test_setup_script_uses_the_shared_functions():
    text = (REPO / "scripts" / "setup.sh").read_text()
    for fn in ("rectrain_device", "variant_mismatch", "check_device"):
        assert fn in text
    assert "cu128" not in text


# --------------------------------------------------------------------------- 16.7


def test_gpu_smoke_skips_cleanly_without_gpu(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_smoke.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert rep["install"]["status"] == "ok"
    assert {k: v["status"] for k, v in rep.items() if k != "install"} == {
        "job": "skip",
        "regs": "skip",
        "pipeline": "skip",
        "ray1": "skip",
        "ray2": "skip",
        "bench": "skip",
    }
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_smoke.py"), "--out", str(tmp_path), "--require-gpu"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    assert r.returncode == 1 and "--require-gpu" in r.stdout


def test_makefile_has_the_gpu_targets():
    mk = (REPO / "Makefile").read_text()
    assert "check-cuda-install:" in mk and "scripts/check_cuda_install.py" in mk
    assert "gpu-smoke: setup" in mk and "scripts/gpu_smoke.py" in mk
