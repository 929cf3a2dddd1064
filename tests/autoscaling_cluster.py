"""A real Ray autoscaler on one machine: Ray's fake multi-node provider, for tests.

The head runs ``ray start --head --block --autoscaling-config=FILE`` with
``RAY_FAKE_CLUSTER=1``; its autoscaler (the real one, v1) starts and removes worker nodes
as local raylets (``ray/autoscaler/_private/fake_multi_node/node_provider.py``). Ray's
wrapper ``ray.cluster_utils.AutoscalingCluster`` is not used: in the 2.60 wheel its
example config is missing and its ``start()`` runs ``ray stop --force``, which stops every
Ray on the machine. This head has its own temp dir and free ports, binds loopback, and
:meth:`AutoscalingHead.stop` kills its process group and the fake nodes' raylets (the
provider starts them in process groups of their own, found by this head's temp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.net import free_port, wait_port

VENV_BIN = Path(sys.executable).parent


def fake_config(gcs_address: str, worker: dict, max_workers: int, idle_timeout_s: float) -> dict:
    """The autoscaling config of the fake provider: a CPU-less head and one worker type."""
    return {
        "cluster_name": "rectrain-fake",
        "max_workers": max_workers,
        # gcs_address: the fake nodes' raylets join this head, not 127.0.0.1:6379
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": worker,
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@dataclass
class AutoscalingHead:
    address: str  # GCS
    dashboard_url: str
    tmpdir: str
    proc: subprocess.Popen
    log_path: Path
    pgids: set[int] = field(default_factory=set)

    def alive_workers(self) -> int:
        """Alive nodes with CPUs (the head has none)."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard_url, limit=1000, timeout=10, raise_on_missing_output=False)
        return sum(1 for n in nodes if n.state == "ALIVE" and (n.resources_total or {}).get("CPU", 0) > 0)

    def _own_pgids(self) -> set[int]:
        """Process groups of the processes started for this cluster (their command lines
        name its temp dir), the head's own first."""
        out = {self.proc.pid}
        for p in psutil.process_iter(["cmdline", "pid"]):
            try:
                if any(self.tmpdir in a for a in p.info["cmdline"] or []):
                    out.add(os.getpgid(p.info["pid"]))
            except (psutil.Error, ProcessLookupError):
                continue
        return out

    def stop(self) -> None:
        self.pgids |= self._own_pgids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pg in self.pgids:
                try:
                    os.killpg(pg, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def start_autoscaling_head(
    worker: dict, max_workers: int = 2, idle_timeout_s: float = 5.0, log_dir: Path | None = None
) -> AutoscalingHead:
    tmpdir = tempfile.mkdtemp(prefix="rta-", dir="/tmp")  # short: Ray's socket paths
    port, dash = free_port(), free_port()
    gcs = f"127.0.0.1:{port}"
    cfg = Path(tmpdir) / "autoscaling.json"
    cfg.write_text(json.dumps(fake_config(gcs, worker, max_workers, idle_timeout_s)))
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_ADDRESS": gcs,
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
        "RAY_TMPDIR": tmpdir,
    }
    log_path = (log_dir or Path(tmpdir)) / "ray-autoscaling-head.log"
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--autoscaling-config={cfg}",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={tmpdir}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    head = AutoscalingHead(gcs, f"http://127.0.0.1:{dash}", tmpdir, proc, log_path)
    try:
        wait_port(port, 90)
        wait_port(dash, 90)
    except BaseException:
        head.stop()
        raise
    return head
