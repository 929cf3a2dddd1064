"""Is a job's storage shared with every Ray worker? (:func:`check_shared`, by the driver
once it is connected to Ray, before its workers start.)

Kept apart from :mod:`trainer.storage`, which the control plane imports without Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

from trainer.storage import ENV_STORAGE_URI, StorageError, is_local, resolve


def check_shared(location: str, *, explicit: bool) -> None:
    """Refuse a storage location the Ray workers cannot reach; call with Ray connected.

    Object stores are shared by nature. A local path is fine when every node that can
    run a worker is this one; otherwise it must be a mount present on every node
    (an RWX volume), which only an explicit ``RECTRAIN_STORAGE_URI`` can promise — and
    we check it: every worker node must see a marker file written here.
    """
    import ray

    if not is_local(location):
        return
    me = ray.get_runtime_context().get_node_id()
    others = [
        n
        for n in ray.nodes()
        if n.get("Alive")
        and n["NodeID"] != me
        and any(n.get("Resources", {}).get(r, 0) > 0 for r in ("CPU", "GPU"))
    ]
    if not others:
        return
    path = resolve(location)[1]
    if not explicit:
        raise StorageError(
            f"storage: this run's directory {path} is local to the Ray head, but Ray workers run on "
            f"{len(others)} other node(s) and cannot reach it; set {ENV_STORAGE_URI} to shared storage "
            "(s3://bucket/prefix, or a ReadWriteMany volume mounted at the same path on every node)"
        )
    marker = Path(path, f".rectrain-shared-{os.getpid()}-{os.urandom(4).hex()}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=0)
        def _sees(p: str) -> bool:
            return os.path.exists(p)

        refs = {
            n["NodeManagerAddress"] + " " + n["NodeID"][:8]: _sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in others
        }
        blind = [name for name, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise StorageError(
            f"storage: {ENV_STORAGE_URI}={location} is not shared: Ray node(s) {', '.join(blind)} do not "
            "see files written there; mount the same ReadWriteMany volume on every node or use s3://"
        )
