"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``), for tests.

It runs in its own helper process with a private ``RAY_TMPDIR`` (``Cluster`` rewrites
the "current cluster" file that other Ray users on the machine read), so neither the
session Ray cluster nor the pytest process's own Ray connection is touched. Closing the
helper's stdin shuts down exactly this cluster's processes.

    python -m tests.ray_cluster HEAD_CPUS CPUS_PER_NODE NUM_NODES
prints ``ADDRESS <gcs address>`` once every node is up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LocalCluster:
    address: str
    tmpdir: str
    proc: subprocess.Popen

    def env(self) -> dict[str, str]:
        """What a driver process needs to join this cluster (and nothing else)."""
        return {"RAY_ADDRESS": self.address, "RAY_TMPDIR": self.tmpdir}

    def shutdown(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(60)
        except (subprocess.TimeoutExpired, OSError):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(20)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue


def start_cluster(
    *, head_cpus: int = 0, cpus_per_node: int = 1, num_nodes: int = 2, env: dict[str, str] | None = None
) -> LocalCluster:
    """Start the cluster; on a loaded machine the head can miss Ray's start-up deadline,
    so one failed start is cleaned up and tried again."""
    for attempt in (1, 2):
        try:
            return _start_cluster_once(head_cpus, cpus_per_node, num_nodes, env)
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_cluster_once(
    head_cpus: int, cpus_per_node: int, num_nodes: int, env: dict[str, str] | None
) -> LocalCluster:
    # a short path: Ray's Unix sockets live under it (108-byte limit)
    tmpdir = tempfile.mkdtemp(prefix="rtc-", dir="/tmp")
    from services.launch_env import pythonpath_with
    from services.local_ray import LOOPBACK_ENV

    # its nodes bind and advertise 127.0.0.1 (one machine), like every test Ray
    full_env = {**os.environ, **(env or {}), **LOOPBACK_ENV, "RAY_TMPDIR": tmpdir}
    full_env.pop("RAY_ADDRESS", None)
    repo = str(Path(__file__).resolve().parents[1])
    full_env["PYTHONPATH"] = pythonpath_with(repo, env=full_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ray_cluster", str(head_cpus), str(cpus_per_node), str(num_nodes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(Path(tmpdir) / "cluster.log", "w"),
        text=True,
        env=full_env,
        cwd=repo,
        start_new_session=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("ADDRESS "):
        LocalCluster("", tmpdir, proc).shutdown()
        try:  # whatever of it did start lives in the helper's own process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise RuntimeError(
            f"the test Ray cluster did not start: {(Path(tmpdir) / 'cluster.log').read_text()[-3000:]}"
        )
    return LocalCluster(line.split()[1], tmpdir, proc)


def _main() -> None:
    from ray.cluster_utils import Cluster

    head_cpus, cpus, n = (int(x) for x in sys.argv[1:4])
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": head_cpus, "include_dashboard": False},
    )
    try:
        for _ in range(n):
            cluster.add_node(num_cpus=cpus, object_store_memory=100 * 1024 * 1024)
        cluster.wait_for_nodes()
        print("ADDRESS", cluster.address, flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _main()
