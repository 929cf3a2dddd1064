"""``make check-cuda-install``: does the CUDA install resolve, and do its pins agree?

No GPU needed. Two checks:

1. Consistency (offline): ``pyproject.toml``'s ``cuda`` extra, ``requirements-torchrec.txt``,
   ``scripts/setup-lib.sh`` (the index setup.sh uses) and ``deploy/Dockerfile.cuda`` name
   one triple from one CUDA variant: torch 2.13.0 from the ``cu130`` index,
   fbgemm-gpu 1.8.0, torchrec 1.8.0, and a CUDA 13.0 base image.
2. Resolution (``--offline`` skips it): ``pip install --dry-run --ignore-installed
   --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11`` of the
   three pins, for a Linux x86-64 target, from the CUDA index (or PyPI, whose Linux
   torch 2.13.0 is the same cu130 build, where the PyTorch index is unreachable). The
   top-level pins are resolved with ``--no-deps``: torch's NVIDIA dependencies
   (``cuda-toolkit``, ``nvidia-cudnn-cu13`` ...) are large and not always reachable
   from a build box; the check reads them from torch's metadata instead and fails
   unless they are the CUDA 13.0 ones. A full resolution with dependencies is then
   tried and its outcome printed (not a failure when a transitive package is missing).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "cu130"
CUDA = "13.0"
PINS = {"torch": "2.13.0", "fbgemm-gpu": "1.8.0", "torchrec": "1.8.0"}


def _pins(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", r)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def consistency(root: Path = ROOT) -> list[str]:
    """Every disagreement between the files that install the CUDA stack (empty: agree)."""
    errs: list[str] = []
    py = tomllib.loads((root / "pyproject.toml").read_text())
    cuda = _pins(py["project"]["optional-dependencies"]["cuda"])
    trec = _pins((root / "requirements-torchrec.txt").read_text().splitlines())
    have = {**cuda, **trec}
    for name, want in PINS.items():
        if have.get(name) != want:
            errs.append(f"{name}: pinned {have.get(name)!r}, the {VARIANT} triple is {name}=={want}")
    lib = (root / "scripts" / "setup-lib.sh").read_text()
    m = re.search(r"^RECTRAIN_CUDA_INDEX_URL=(\S+)", lib, re.M)
    setup_index = m.group(1) if m else None
    if not setup_index or not setup_index.rstrip("/").endswith(VARIANT):
        errs.append(
            f"scripts/setup-lib.sh: RECTRAIN_CUDA_INDEX_URL is {setup_index!r}, not the {VARIANT} index"
        )
    docker = (root / "deploy" / "Dockerfile.cuda").read_text()
    m = re.search(r"^ARG TORCH_INDEX_URL=(\S+)", docker, re.M)
    docker_index = m.group(1) if m else None
    if docker_index != setup_index:
        errs.append(
            f"deploy/Dockerfile.cuda: TORCH_INDEX_URL {docker_index!r} differs from setup.sh's {setup_index!r}"
        )
    m = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-\S+", docker, re.M)
    if not m or m.group(1) != CUDA:
        errs.append(f"deploy/Dockerfile.cuda: CUDA_IMAGE is not a CUDA {CUDA} image ({m and m.group(0)!r})")
    m = re.search(r'pip install "torch==([^"]+)"', docker)
    if not m or m.group(1) != PINS["torch"]:
        errs.append(f"deploy/Dockerfile.cuda: installs torch {m and m.group(1)!r}, not {PINS['torch']}")
    return errs


def _dry_run(index: str, *, deps: bool, python_version: str) -> tuple[int, str, dict | None]:
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"]
        cmd += ["--python-version", python_version, "--target", str(Path(d) / "t"), "--report", str(report)]
        cmd += ["--index-url", index, "--disable-pip-version-check", "-q"]
        if not deps:
            cmd.append("--no-deps")
        cmd += [f"{k}=={v}" for k, v in PINS.items()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        data = json.loads(report.read_text()) if report.exists() else None
    return r.returncode, (r.stderr or r.stdout).strip(), data


def resolution(indexes: list[str], python_version: str = "3.11", full: bool = True) -> list[str]:
    """Resolve the pins for Linux x86-64 from the first index that answers; errors."""
    last = ""
    for index in indexes:
        rc, err, rep = _dry_run(index, deps=False, python_version=python_version)
        if rc != 0 or rep is None:
            last = f"{index}: {err.splitlines()[-1] if err else rc}"
            print(f"  top-level pins do not resolve from {last}")
            continue
        got = {i["metadata"]["name"].lower().replace("_", "-"): i for i in rep["install"]}
        errs = []
        for name, want in PINS.items():
            v = got.get(name, {}).get("metadata", {}).get("version", "")
            if v.split("+")[0] != want:
                errs.append(f"{name}: resolved {v!r}, want {want}")
            else:
                print(f"  {name} {v}: {got[name]['download_info']['url'].rsplit('/', 1)[-1]}")
        torch = got.get("torch", {}).get("metadata", {})
        local = torch.get("version", "").partition("+")[2]
        cuda_reqs = [d for d in torch.get("requires_dist", []) if re.match(r"(cuda-toolkit|nvidia-)", d)]
        toolkit = [d for d in cuda_reqs if d.startswith("cuda-toolkit")]
        if local and local != VARIANT:
            errs.append(f"torch: resolved the {local} build, not {VARIANT}")
        if not local and not any(f"=={CUDA}." in d for d in toolkit):
            errs.append(f"torch: its metadata names no CUDA {CUDA} toolkit ({toolkit or 'no cuda-toolkit'})")
        print(f"  torch's CUDA dependencies: {', '.join(d.split(';')[0] for d in cuda_reqs) or 'none'}")
        if not full:
            return errs
        rc, err, _ = _dry_run(index, deps=True, python_version=python_version)
        print(
            "  with dependencies: "
            + (
                "resolves"
                if rc == 0
                else f"does not resolve from here ({err.splitlines()[-1] if err else rc})"
            )
        )
        return errs
    return [f"the CUDA pins resolve from no index ({last})"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--offline", action="store_true", help="only the consistency check")
    p.add_argument("--python-version", default="3.11")
    args = p.parse_args(argv)
    errs = consistency()
    print(f"check-cuda-install: consistency of the {VARIANT} triple: {'ok' if not errs else 'FAILED'}")
    if not errs and not args.offline:
        lib = (ROOT / "scripts" / "setup-lib.sh").read_text()
        index = re.search(r"^RECTRAIN_CUDA_INDEX_URL=(\S+)", lib, re.M).group(1)  # type: ignore[union-attr]
        print("check-cuda-install: resolution for manylinux_2_28_x86_64, Python " + args.python_version)
        errs += resolution([index, "https://pypi.org/simple"], args.python_version)
    for e in errs:
        print("  " + e)
    print("check-cuda-install: " + ("ok" if not errs else "FAILED"))
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
