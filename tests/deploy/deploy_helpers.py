"""Shared helpers for the deployment tests (Helm chart, compose files, images).

Imported by the test modules of this directory; named deploy_helpers rather than
conftest so that it cannot clash with another test directory's module.

Everything here runs offline: the chart is rendered and linted by Helm's own Go SDK
(PyPI ``helm-python-sdk``), manifests are checked against the Kubernetes OpenAPI
schemas shipped by ``kubernetes-validate``, compose files by Debian's
``docker-compose config``. No Docker engine, cluster or network is needed.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "rectrain"
HERE = Path(__file__).resolve().parent
RAYCLUSTER_SCHEMA = HERE / "kuberay_raycluster_v1.schema.json"
SERVICEMONITOR_SCHEMA = HERE / "servicemonitor_v1.schema.json"

RELEASE = "rt"
NAMESPACE = "ml"
# The newest Kubernetes minor whose schemas kubernetes-validate ships, plus an older
# one still in wide use on managed GPU clusters.
KUBE_VERSIONS = ("1.37", "1.31")

# Values sets the chart must render and validate with: name -> list of files (merged in order).
VALUES_SETS: dict[str, list[Path]] = {
    "default": [],
    "gpu": [CHART / "values-gpu.yaml"],
    "ci-default": [CHART / "ci" / "default-values.yaml"],
    "ci-gpu": [CHART / "ci" / "gpu-values.yaml"],
    "ci-external-redis": [CHART / "ci" / "external-redis-values.yaml"],
    "ci-existing-ray": [CHART / "ci" / "existing-ray-values.yaml"],
    "ci-storage-s3": [CHART / "ci" / "storage-s3-values.yaml"],
}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# The chart requires shared storage (it fails to render without): values that say
# nothing about storage get this one; a test about storage passes its own "storage".
TEST_STORAGE = {"storage": {"uri": "s3://rectrain-test/runs"}}


def with_storage(vals: dict) -> dict:
    return vals if "storage" in vals else deep_merge(TEST_STORAGE, vals)


def load_values(files: list[Path], extra: dict | None = None) -> dict:
    vals: dict = {}
    for f in files:
        vals = deep_merge(vals, yaml.safe_load(f.read_text()) or {})
    if extra:
        vals = deep_merge(vals, extra)
    return with_storage(vals)


@cache
def _chart():
    import helm_python as helm

    return helm.Chart.load(str(CHART))


def render_raw(values: dict | None = None) -> dict[str, str]:
    """template path -> rendered text, as `helm template` would produce it."""
    return _chart().render(
        values=with_storage(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True
    )


def render(values: dict | None = None) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object (NOTES.txt excluded)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render_raw(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def render_set(name: str, extra: dict | None = None) -> list[dict[str, Any]]:
    return render(load_values(VALUES_SETS[name], extra))


def objs(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in objs(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_specs(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(label, pod template metadata, pod spec) of every workload in the render."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            t = d["spec"]["template"]
            out.append((f"{d['kind']}/{d['metadata']['name']}", t["metadata"], t["spec"]))
        elif d["kind"] == "RayCluster":
            t = d["spec"]["headGroupSpec"]["template"]
            out.append(("RayCluster/head", t["metadata"], t["spec"]))
            for g in d["spec"].get("workerGroupSpecs", []):
                t = g["template"]
                out.append((f"RayCluster/worker/{g['groupName']}", t["metadata"], t["spec"]))
    return out


@cache
def raycluster_validator():
    """A JSON-schema validator for RayCluster objects: the vendored KubeRay schema with
    its pod templates resolved against kubernetes-validate's strict core/v1 schemas."""
    return _crd_validator(RAYCLUSTER_SCHEMA)


@cache
def servicemonitor_validator():
    """The same for Prometheus Operator ServiceMonitors (a trimmed vendored schema)."""
    return _crd_validator(SERVICEMONITOR_SCHEMA)


def _crd_validator(schema_path: Path):
    import importlib.resources

    import jsonschema
    import kubernetes_validate.utils as kvu
    from referencing import Registry, Resource

    version = kvu.latest_version()
    defs_path = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
        / "_definitions.json"
    )
    defs = json.loads(defs_path.read_text())
    schema = json.loads(schema_path.read_text())
    registry = Registry().with_resources(
        [
            (defs["$id"], Resource.from_contents(defs)),
            (schema["$id"], Resource.from_contents(schema)),
        ]
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)
