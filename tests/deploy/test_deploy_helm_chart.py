"""The Helm chart (helm/rectrain), rendered and linted by Helm's own engine, validated
against the Kubernetes schemas and KubeRay's RayCluster schema, and checked for the
properties a GPU deployment depends on."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from unittest import mock

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_helpers import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    REPO,
    VALUES_SETS,
    env_of,
    load_values,
    objs,
    one,
    pod_specs,
    raycluster_validator,
    render,
    render_raw,
    render_set,
    servicemonitor_validator,
)

SETS = sorted(VALUES_SETS)


# --------------------------------------------------------------------------- chart / lint


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "rectrain"
    assert meta["type"] == "application"
    with helm.Chart.load(str(CHART)) as c:
        assert c.metadata["version"] == meta["version"]
        assert c.values["ray"]["worker"]["gpus"] == 0  # CPU by default; values-gpu.yaml adds GPUs


@pytest.mark.parametrize("values_set", SETS)
def test_helm_lint_strict(values_set):
    for kube in KUBE_VERSIONS:
        report = helm.lint(
            str(CHART), load_values(VALUES_SETS[values_set]), strict=True, kube_version=f"v{kube}.0"
        )
        assert report["total_charts_linted"] == 1
        assert report["errors"] == [], report
        # severity: 1 info, 2 warning, 3 error. Only "icon is recommended" style infos allowed.
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        assert bad == [], bad


def test_helm_lint_is_not_a_no_op(tmp_path):
    """Lint does find problems: a copy of the chart with a template emitting a
    malformed manifest fails it. (Helm's lint mode logs `fail` calls instead of
    failing, so bad values are covered by test_invalid_values_fail_to_render.)"""
    import shutil

    broken = tmp_path / "rectrain"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [not, a, map\n"
    )
    report = helm.lint(str(broken), {}, strict=True)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"]), report


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("values_set", SETS)
def test_every_manifest_validates_against_kubernetes_schemas(values_set):
    docs = render_set(values_set)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Secret"} <= kinds or "Deployment" in kinds
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            continue  # CRD: checked against KubeRay's schema below
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            servicemonitor_validator().validate(doc)  # CRD: Prometheus Operator's (trimmed) schema
            continue
        for kube in KUBE_VERSIONS:
            # strict: additionalProperties=false everywhere, as kubectl's strict field validation
            kubernetes_validate.validate(doc, kube, strict=True)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("values_set", [s for s in SETS if s != "ci-existing-ray"])
def test_raycluster_validates_against_kuberay_crd_schema(values_set):
    docs = render_set(values_set)
    rc = one(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    raycluster_validator().validate(rc)


def test_kuberay_schema_rejects_what_the_crd_rejects():
    """The vendored schema is not a rubber stamp."""

    rc = one(render_set("gpu"), "RayCluster")
    v = raycluster_validator()
    bad = []
    r = yaml.safe_load(yaml.safe_dump(rc))
    r["spec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 1}  # must be strings
    bad.append(r)
    r = yaml.safe_load(yaml.safe_dump(rc))
    del r["spec"]["workerGroupSpecs"][0]["groupName"]
    bad.append(r)
    r = yaml.safe_load(yaml.safe_dump(rc))
    r["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # typo'd field
    bad.append(r)
    r = yaml.safe_load(yaml.safe_dump(rc))
    r["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}  # core/v1 typo
    bad.append(r)
    r = yaml.safe_load(yaml.safe_dump(rc))
    r["apiVersion"] = "ray.io/v1alpha1"
    bad.append(r)
    for b in bad:
        with pytest.raises(jsonschema.ValidationError):
            v.validate(b)


# --------------------------------------------------------------------------- Ray / GPU


def _worker_group(docs):
    groups = one(docs, "RayCluster")["spec"]["workerGroupSpecs"]
    assert len(groups) == 1
    return groups[0]


def test_gpu_values_give_gpu_workers_on_gpu_nodes():
    docs = render_set("gpu")
    rc = one(docs, "RayCluster")
    g = _worker_group(docs)
    c = g["template"]["spec"]["containers"][0]
    # one pod per GPU node with all its GPUs (Ray Train: one worker per GPU inside it)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "8"
    assert g["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in g["template"]["spec"][
        "tolerations"
    ]
    assert (g["minReplicas"], g["replicas"], g["maxReplicas"]) == (0, 0, 4)  # scales from zero
    assert g["groupName"] == "gpu-workers"
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    assert rc["spec"]["autoscalerOptions"]["upscalingMode"] == "Default"
    assert c["image"].endswith(":0.1.0-cuda")
    # head and workers share one image (Ray needs the same Python/Ray everywhere); the head has no GPU
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == c["image"]
    assert "nvidia.com/gpu" not in str(head)
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # never GPUs on the head
    # NCCL defaults on GPU workers only; shared memory for NCCL is memory-backed
    env = env_of(c)
    assert env["NCCL_DEBUG"]["value"] == "WARN" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"]["value"] == "1"
    assert not any(k.startswith(("NCCL_", "TORCH_NCCL")) for k in env_of(head["containers"][0]))
    vols = {v["name"]: v for v in g["template"]["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    # the head and workers may not be evicted by drains
    pdbs = {p["metadata"]["name"]: p for p in objs(docs, "PodDisruptionBudget")}
    assert sorted(pdbs) == ["rt-rectrain-ray-head", "rt-rectrain-ray-worker"]
    for label, meta, _ in pod_specs(docs):
        if label.startswith("RayCluster/"):
            kind = "head" if label == "RayCluster/head" else "worker"
            pdb = pdbs[f"rt-rectrain-ray-{kind}"]["spec"]
            assert pdb["maxUnavailable"] == 0 and _matches(pdb["selector"]["matchLabels"], meta["labels"])
    # the API stays on the CPU image
    api = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["image"].endswith(":0.1.0-cpu")


def test_gpu_count_and_cpu_memory_kept_together():
    docs = render_set("ci-gpu")
    c = _worker_group(docs)["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}


def test_default_values_are_cpu_only():
    docs = render_set("default")
    rc = one(docs, "RayCluster")
    assert "nvidia.com/gpu" not in yaml.safe_dump(rc)
    assert rc["spec"]["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in rc["spec"]
    g = _worker_group(docs)
    assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    assert objs(docs, "PodDisruptionBudget") == [] and objs(docs, "ServiceMonitor") == []
    for label, _, spec in pod_specs(docs):
        assert "runtimeClassName" not in spec and "priorityClassName" not in spec, label
        for c in spec["containers"]:
            assert "IPC_LOCK" not in str(c.get("securityContext")), label
            assert not any(k.startswith("NCCL_") for k in env_of(c)), label  # CPU workers: no NCCL
    api = env_of(one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0])
    assert "RECTRAIN_AUTOSCALING_SHAPE" not in api  # no autoscaler: capacity from Ray's live nodes
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["dashboard"] == 8265 and ports["gcs-server"] == 6379


def test_ray_pods_get_shared_memory_and_data():
    for _, _, spec in pod_specs(render_set("default")):
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        if "dshm" in vols:
            assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
            mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
            assert {"/dev/shm", "/data"} <= mounts


def test_api_submits_to_the_kuberay_head_service():
    docs = render_set("default")
    rc = one(docs, "RayCluster")
    api = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(api)
    # KubeRay names the head service <raycluster>-head-svc; the Jobs API is on the dashboard port
    assert env["RAY_ADDRESS"]["value"] == f"http://{rc['metadata']['name']}-head-svc.{NAMESPACE}.svc:8265"
    assert env["RECTRAIN_ENV"]["value"] == "production"
    assert env["RECTRAIN_DATA_DIR"]["value"] == "/data"
    assert env["REDIS_URL"]["value"] == f"redis://rt-rectrain-redis.{NAMESPACE}.svc:6379/0"


def test_existing_ray_cluster_instead_of_raycluster():
    docs = render_set("ci-existing-ray")
    assert objs(docs, "RayCluster") == []
    api = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(api)["RAY_ADDRESS"]["value"] == "http://ray-head.ray-system.svc:8265"
    sts = one(docs, "StatefulSet", "-redis")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "redis-data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_ray_token_auth_and_the_checkpoint_key_come_from_one_secret():
    """The chart's RayCluster is reachable from other pods: Ray's token auth is on in every
    Ray pod and the API (its Ray client), and the checkpoint-signing key is the same on
    the API (verifies) and the Ray pods (write), all from one generated Secret."""
    values = load_values(VALUES_SETS["default"])
    raw = render_raw(values)
    docs = render(values)
    secret = one(docs, "Secret", "-cluster")
    token = base64.b64decode(secret["data"]["ray-auth-token"]).decode()
    key = base64.b64decode(secret["data"]["checkpoint-secret"]).decode()
    assert len(token) == 48 and len(key) == 48 and token != key
    assert _secret_leaks(docs, raw, token) == [] and _secret_leaks(docs, raw, key) == []
    specs = [
        (label, spec) for label, _, spec in pod_specs(docs) if label.startswith(("RayCluster", "Deployment"))
    ]
    assert len(specs) >= 3  # the API, the head, the workers
    for label, spec in specs:
        env = env_of(spec["containers"][0])
        assert env["RAY_AUTH_MODE"]["value"] == "token", label
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": "ray-auth-token",
        }, label
        assert env["RECTRAIN_CHECKPOINT_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "checkpoint-secret"
    # an existing Ray cluster: its auth is its operator's; the checkpoint key is still set
    api = one(render_set("ci-existing-ray"), "Deployment", "-api")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert "RAY_AUTH_MODE" not in env_of(api) and "RECTRAIN_CHECKPOINT_SECRET" in env_of(api)


# --------------------------------------------------------------------------- API pod


@pytest.mark.parametrize("values_set", SETS)
def test_api_probes_and_resources(values_set):
    dep = one(render_set(values_set), "Deployment", "-api")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in port_names
    assert port_names["http"] == 8000
    assert c["args"] == ["api", "--loops", "off"]  # the worker Deployment runs the control loops
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_api_service_and_ingress():
    docs = render_set("ci-gpu")
    svc = one(docs, "Service", "-api")
    dep = one(docs, "Deployment", "-api")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    ing = one(docs, "Ingress", "-api")
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": svc["metadata"]["name"], "port": {"name": "http"}}
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"][0]["secretName"] == "rectrain-tls"
    assert objs(render_set("default"), "Ingress") == []


# --------------------------------------------------------------------------- worker pod

_API_ONLY_ENV = {"RECTRAIN_API_PORT"}


@pytest.mark.parametrize("values_set", SETS)
def test_api_and_worker_are_separate_deployments_with_one_environment(values_set):
    """The control loops run in their own Deployment (`rectrain worker`), with exactly
    the API's settings but the API's own port; the API pods run with their loops off."""
    docs = render_set(values_set)
    api = one(docs, "Deployment", "-api")
    worker = one(docs, "Deployment", "-worker")
    assert worker["spec"]["replicas"] == 1
    wspec = worker["spec"]["template"]["spec"]
    [wc] = wspec["containers"]
    [ac] = api["spec"]["template"]["spec"]["containers"]
    assert wc["args"] == ["worker"] and ac["args"] == ["api", "--loops", "off"]
    assert wc["image"] == ac["image"]
    assert "ports" not in wc  # nothing to serve: no Service selects it
    a_env, w_env = env_of(ac), env_of(wc)
    assert {k: v for k, v in a_env.items() if k not in _API_ONLY_ENV} == w_env
    assert wc.get("envFrom") == ac.get("envFrom")
    assert {m["mountPath"] for m in wc["volumeMounts"]} == {"/tmp", "/data"}
    assert wc["securityContext"]["readOnlyRootFilesystem"] is True
    # the API Service and PodDisruptionBudgets do not select the worker
    wlabels = worker["spec"]["template"]["metadata"]["labels"]
    assert wlabels["app.kubernetes.io/component"] == "worker"
    assert wlabels["rectrain.io/redis-client"] == "true"
    svc = one(docs, "Service", "-api")
    assert not svc["spec"]["selector"].items() <= wlabels.items()


def test_api_replicas_scale_while_one_worker_dispatches():
    docs = render({"api": {"replicaCount": 3}})
    assert one(docs, "Deployment", "-api")["spec"]["replicas"] == 3
    assert one(docs, "Deployment", "-worker")["spec"]["replicas"] == 1


def test_without_the_worker_the_api_runs_the_control_loops():
    docs = render({"worker": {"enabled": False}})
    assert [d for d in objs(docs, "Deployment") if d["metadata"]["name"].endswith("-worker")] == []
    api = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["args"] == ["api", "--loops", "in-process"]
    pol = one(docs, "NetworkPolicy", "-ray")
    jobs_rule = pol["spec"]["ingress"][1]
    [peer] = jobs_rule["from"]
    assert peer["podSelector"]["matchExpressions"][0]["values"] == ["api"]


def test_the_worker_arguments_are_what_the_cli_accepts():
    """The chart's container arguments parse with the rectrain command (through the
    image's entrypoint: `api` is `rectrain serve --host 0.0.0.0 --port 8000`)."""
    from cli.main import build_parser

    docs = render_set("default")
    args = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "8000", *args[1:]])
    assert parsed.loops == "off"
    wargs = one(docs, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert build_parser().parse_args(wargs).command == "worker"


# --------------------------------------------------------------------------- security


@pytest.mark.parametrize("values_set", SETS)
def test_every_pod_runs_as_non_root(values_set):
    docs = render_set(values_set)
    specs = pod_specs(docs)
    assert len(specs) >= 1
    for label, _, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, label
        assert psc["runAsUser"] != 0, label
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", label
        # only the head mounts a token, and only when its autoscaler needs the Kubernetes API
        autoscaler_head = (
            label == "RayCluster/head" and one(docs, "RayCluster")["spec"]["enableInTreeAutoscaling"]
        )
        assert spec["automountServiceAccountToken"] is bool(autoscaler_head), label
        assert spec["enableServiceLinks"] is False, label
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (label, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (label, c["name"])
            assert sc.get("privileged") is not True


def test_api_and_redis_have_read_only_root_with_writable_tmp_and_data():
    docs = render_set("default")
    for suffix in ("-api",):
        spec = one(docs, "Deployment", suffix)["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in vols[mounts["/tmp"]]
        assert "emptyDir" in vols[mounts["/data"]]
        assert env_of(c)["HOME"]["value"] == "/tmp"
    redis = one(docs, "StatefulSet", "-redis")["spec"]["template"]["spec"]["containers"][0]
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_account():
    docs = render_set("default")
    sa = one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert objs(docs, "Role") == [] and objs(docs, "RoleBinding") == []
    for label, _, spec in pod_specs(docs):
        assert spec["serviceAccountName"] == sa["metadata"]["name"], label
    docs = render_set("ci-external-redis")
    assert objs(docs, "ServiceAccount") == []
    for label, _, spec in pod_specs(docs):
        assert spec["serviceAccountName"] == "ml-jobs", label


@pytest.mark.parametrize("values_set", ["gpu", "ci-gpu", "ci-storage-s3"])
def test_autoscaler_gets_a_service_account_with_rbac_and_a_token(values_set):
    """values-gpu.yaml turns the in-tree autoscaler on: it must reach the Kubernetes API
    (list/watch pods, patch the RayCluster) from the head pod, and nothing else may."""
    docs = render_set(values_set)
    rc = one(docs, "RayCluster")
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    sa = one(docs, "ServiceAccount", "-ray-autoscaler")
    assert (
        head["serviceAccountName"] == sa["metadata"]["name"] and head["automountServiceAccountToken"] is True
    )
    role, binding = one(docs, "Role", "-ray-autoscaler"), one(docs, "RoleBinding", "-ray-autoscaler")
    rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        ("", "pods"): {"get", "list", "watch"},
        ("ray.io", "rayclusters"): {"get", "list", "watch", "patch"},
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml"}
    ]
    for label, _, spec in pod_specs(docs):
        if label != "RayCluster/head":
            assert (
                spec["automountServiceAccountToken"] is False
                and spec["serviceAccountName"] != sa["metadata"]["name"]
            )


# --------------------------------------------------------------------------- storage


def _containers(docs):
    for label, _, spec in pod_specs(docs):
        if "redis" in label:
            continue
        for c in spec["containers"]:
            yield label, c


def test_s3_storage_with_credentials_from_a_secret():
    docs = render_set("ci-storage-s3")
    seen = set()
    for label, c in _containers(docs):
        env = env_of(c)
        assert env["RECTRAIN_STORAGE_URI"]["value"] == "s3://rectrain-bucket/prod", label
        assert env["RECTRAIN_DATA_ROOTS"]["value"] == "s3://click-logs/,/data/datasets", label
        assert c["envFrom"] == [{"secretRef": {"name": "rectrain-s3-credentials"}}], label
        assert not any(k.startswith("AWS_SECRET") for k in env), label
        seen.add(label.split("/")[0])
    assert seen == {"Deployment", "RayCluster"}


def test_rwx_claim_is_the_storage_on_every_pod():
    docs = render({"storage": {"existingClaim": "shared-rwx"}})
    for label, _, spec in pod_specs(docs):
        if "redis" in label:
            continue
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["data"]["persistentVolumeClaim"] == {"claimName": "shared-rwx"}, label
        for c in spec["containers"]:
            assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"], label
            assert env_of(c)["RECTRAIN_STORAGE_URI"]["value"] == "/data", label
            assert "envFrom" not in c
    # without shared storage (only when asked for explicitly) nothing claims to be shared
    for _, c in _containers(render({"storage": {"allowPodLocal": True}})):
        assert "RECTRAIN_STORAGE_URI" not in env_of(c) and "RECTRAIN_DATA_ROOTS" not in env_of(c)
    docs = render({"storage": {"existingClaim": "shared-rwx", "uri": "/data/rectrain"}})
    assert all(env_of(c)["RECTRAIN_STORAGE_URI"]["value"] == "/data/rectrain" for _, c in _containers(docs))


def test_ray_pods_admit_only_each_other_and_the_api_on_the_jobs_port():
    docs = render_set("ci-storage-s3")
    pol = one(docs, "NetworkPolicy", "-ray")
    sel = pol["spec"]["podSelector"]

    def selected(selector, labels):
        ok = _matches(selector.get("matchLabels", {}), labels)
        for e in selector.get("matchExpressions", []):
            ok = ok and labels.get(e["key"]) in e["values"]
        return ok

    pods = {label: meta["labels"] for label, meta, _ in pod_specs(docs)}
    assert {lbl for lbl, labels in pods.items() if selected(sel, labels)} == {
        lbl for lbl in pods if lbl.startswith("RayCluster/")
    }
    ray_rule, api_rule, gcs_rule = pol["spec"]["ingress"]  # ci-storage-s3: the autoscaler is on
    # the dispatcher's pod reaches the GCS (6379) only: it asks the autoscaler for queued jobs
    assert gcs_rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert "ports" not in ray_rule  # Ray's own ports between its pods
    [peer] = ray_rule["from"]
    assert {lbl for lbl, labels in pods.items() if selected(peer["podSelector"], labels)} == {
        lbl for lbl in pods if lbl.startswith("RayCluster/")
    }
    assert api_rule["ports"] == [{"protocol": "TCP", "port": 8265}]
    [api_peer] = api_rule["from"]
    assert {lbl for lbl, labels in pods.items() if selected(api_peer["podSelector"], labels)} == {
        lbl for lbl in pods if lbl.startswith("Deployment/") and lbl.endswith(("-api", "-worker"))
    }
    # the GCS: only the worker, whose dispatcher asks the autoscaler
    assert {lbl for lbl, labels in pods.items() if selected(gcs_rule["from"][0]["podSelector"], labels)} == {
        lbl for lbl in pods if lbl.startswith("Deployment/") and lbl.endswith("-worker")
    }
    # Redis admits the external Ray namespace given in redisExtraFrom
    redis_peers = one(docs, "NetworkPolicy", "-redis")["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}
    } in redis_peers


# --------------------------------------------------------------------------- secrets


def _secret_leaks(docs, raw_text: dict[str, str], secret_value: str) -> list[str]:
    """Places other than a Secret's data where the value (or its base64) appears."""
    b64 = base64.b64encode(secret_value.encode()).decode()
    leaks = []
    for d in docs:
        if d["kind"] == "Secret":
            continue
        text = yaml.safe_dump(d)
        if secret_value in text or b64 in text:
            leaks.append(f"{d['kind']}/{d['metadata']['name']}")
    notes = raw_text.get("rectrain/templates/NOTES.txt", "")
    if secret_value in notes or b64 in notes:
        leaks.append("NOTES.txt")
    return leaks


def test_tokens_only_in_the_secret():
    values = load_values(VALUES_SETS["ci-gpu"])
    raw = render_raw(values)
    docs = render(values)
    token = "ci-token-0123456789abcdef"
    secret = one(docs, "Secret", "-api-tokens")
    assert base64.b64decode(secret["data"]["api-tokens"]).decode() == f"{token}:ci-owner"
    assert "stringData" not in secret
    assert _secret_leaks(docs, raw, token) == []
    assert _secret_leaks(docs, raw, f"{token}:ci-owner") == []
    api = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(api)["RECTRAIN_API_TOKENS"]
    assert "value" not in ref
    assert ref["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "api-tokens"}
    # Ray pods never see the API tokens
    for label, _, spec in pod_specs(docs):
        if label.startswith("RayCluster"):
            assert "RECTRAIN_API_TOKENS" not in env_of(spec["containers"][0])


def test_generated_token_when_none_given():
    values = load_values(VALUES_SETS["default"])
    raw = render_raw(values)
    docs = render(values)
    secret = one(docs, "Secret", "-api-tokens")
    tokens = base64.b64decode(secret["data"]["api-tokens"]).decode()
    token, owner = tokens.split(":")
    assert owner == "admin" and len(token) == 40 and token.isalnum()
    assert _secret_leaks(docs, raw, token) == []


def test_existing_secret_is_referenced_not_created():
    docs = render_set("ci-external-redis")
    names = [s["metadata"]["name"] for s in objs(docs, "Secret")]
    assert not any(n.endswith("-api-tokens") for n in names), names
    api = one(docs, "Deployment", "-api")["spec"]["template"]
    ref = env_of(api["spec"]["containers"][0])["RECTRAIN_API_TOKENS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "team-rectrain-tokens", "key": "tokens"}
    assert "checksum/api-tokens" not in (api["metadata"].get("annotations") or {})


def test_external_redis_url_kept_in_a_secret_and_no_statefulset():
    values = load_values(VALUES_SETS["ci-external-redis"])
    raw = render_raw(values)
    docs = render(values)
    assert objs(docs, "StatefulSet") == []
    assert not [s for s in objs(docs, "Service") if "redis" in s["metadata"]["name"]]
    # no Redis in the release to protect; only the Ray pods' policy
    assert [n["metadata"]["name"] for n in objs(docs, "NetworkPolicy")] == ["rt-rectrain-ray"]
    url = "redis://:ci-redis-password@redis.example.internal:6379/2"
    sec = one(docs, "Secret", "-redis-url")
    assert base64.b64decode(sec["data"]["redis-url"]).decode() == url
    assert _secret_leaks(docs, raw, "ci-redis-password") == []
    for label, _, spec in pod_specs(docs):
        ref = env_of(spec["containers"][0])["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": sec["metadata"]["name"], "key": "redis-url"}, label
    # the shared data claim is mounted everywhere
    for label, _, spec in pod_specs(docs):
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["data"]["persistentVolumeClaim"]["claimName"] == "rectrain-data-rwx", label


def test_external_redis_from_existing_secret():
    docs = render(
        {
            "redis": {"enabled": False},
            "externalRedis": {"existingSecret": "redis-creds", "existingSecretKey": "url"},
        }
    )
    assert objs(docs, "StatefulSet") == []
    assert not [s for s in objs(docs, "Secret") if s["metadata"]["name"].endswith("-redis-url")]
    api = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(api)["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-creds", "key": "url"}


# --------------------------------------------------------------------------- Redis + NetworkPolicy


def test_redis_statefulset_with_pvc_and_aof():
    docs = render_set("default")
    sts = one(docs, "StatefulSet", "-redis")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert c["livenessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    vct = sts["spec"]["volumeClaimTemplates"][0]
    assert vct["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert {"name": "redis-data", "mountPath": "/data"} in c["volumeMounts"]
    headless = one(docs, "Service", "-redis-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert ":" in c["image"] and not c["image"].endswith(":latest")


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("values_set", ["default", "gpu", "ci-existing-ray"])
def test_network_policy_admits_only_api_and_ray_to_redis(values_set):
    docs = render_set(values_set)
    np_ = one(docs, "NetworkPolicy", "-redis")
    sts = one(docs, "StatefulSet", "-redis")
    redis_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert _matches(np_["spec"]["podSelector"]["matchLabels"], redis_labels)
    assert np_["spec"]["policyTypes"] == ["Ingress"]
    [rule] = np_["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}  # same namespace, no ipBlock / namespaceSelector
    sel = peer["podSelector"]["matchLabels"]
    admitted, refused = [], []
    for label, meta, _ in pod_specs(docs):
        (admitted if _matches(sel, meta["labels"]) else refused).append(label)
    assert any(a.startswith("Deployment/") and a.endswith("-api") for a in admitted)
    if objs(docs, "RayCluster"):
        assert "RayCluster/head" in admitted
        assert any(a.startswith("RayCluster/worker/") for a in admitted)
    assert refused == [f"StatefulSet/{sts['metadata']['name']}"]
    # a random pod of another release, or without the client label, is not admitted
    assert not _matches(sel, {"app.kubernetes.io/instance": "other", "rectrain.io/redis-client": "true"})
    assert not _matches(sel, {"app.kubernetes.io/instance": "rt"})


def test_network_policy_can_be_disabled():
    assert objs(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


# --------------------------------------------------------------------------- bad values fail loudly


@pytest.mark.parametrize(
    "values, message",
    [
        ({"redis": {"enabled": False}}, "externalRedis"),
        ({"ray": {"enabled": False}}, "ray.address"),
        ({"auth": {"tokens": [{"owner": "a", "token": "x" * 30 + ",y"}]}}, "may not contain"),
        ({"auth": {"tokens": [{"owner": "a"}]}}, "both token and owner"),
        ({"auth": {"tokens": [{"owner": "a", "token": "short"}]}}, "at least 24 characters"),
        ({"ray": {"worker": {"minReplicas": 3, "maxReplicas": 2, "replicas": 2}}}, "maxReplicas"),
        ({"ray": {"worker": {"minReplicas": 1, "maxReplicas": 2, "replicas": 5}}}, "replicas must lie"),
        (
            {"storage": {"uri": "/data/rectrain"}},
            "storage.uri: a path is shared only on a ReadWriteMany claim",
        ),
        ({"storage": {"uri": "/mnt/x", "existingClaim": "c"}}, "storage.uri: a path must lie under /data"),
        ({"storage": {"uri": "s3://b/p?access_key=A&secret_key=B"}}, "credentials do not belong in the URI"),
        # no shared storage: refused at render time, saying what to set
        ({"storage": {}}, "storage: Ray workers run on other pods than the head"),
        ({"storage": {"uri": ""}}, "set storage.uri (s3://bucket/prefix"),
        (
            {
                "ray": {
                    "enableInTreeAutoscaling": True,
                    "worker": {"resources": {"limits": {"memory": None}, "requests": {"memory": None}}},
                }
            },
            "ray.worker.resources: set limits.memory",
        ),
    ],
)
def test_invalid_values_fail_to_render(values, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


# --------------------------------------------------------------------------- documentation


def _documented_paths() -> tuple[set[str], set[str]]:
    """(paths with a '# --' comment right above them, all key paths) in values.yaml."""
    documented, all_paths = set(), set()
    stack: list[tuple[int, str]] = []
    prev_comment = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            prev_comment = False
            continue
        if stripped.startswith("#"):
            prev_comment = prev_comment or stripped.startswith("# --")
            continue
        indent = len(line) - len(line.lstrip())
        m = re.match(r"^([A-Za-z0-9_.-]+):", stripped)
        if stripped.startswith("- ") or not m:
            prev_comment = False
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [m.group(1)])
        stack.append((indent, m.group(1)))
        all_paths.add(path)
        if prev_comment:
            documented.add(path)
        prev_comment = False
    return documented, all_paths


def _leaves(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        p = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _leaves(v, p + ".")
        else:
            out.append(p)
    return out


def test_every_value_is_documented_in_values_yaml():
    documented, _ = _documented_paths()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [
        leaf for leaf in _leaves(values) if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert undocumented == [], f"values without a '# --' comment: {undocumented}"


def test_every_value_is_documented_in_the_chart_readme():
    documented, _ = _documented_paths()
    readme = (CHART / "README.md").read_text()
    missing = sorted(p for p in documented if f"`{p}`" not in readme)
    assert missing == [], f"values missing from helm/rectrain/README.md: {missing}"
    # and the README documents nothing that does not exist
    in_readme = {
        k for k in re.findall(r"^\| `([A-Za-z0-9_.-]+)` \|", readme, flags=re.M) if not k.endswith(".yaml")
    }
    assert in_readme and in_readme <= documented, sorted(in_readme - documented)


def test_notes_render_with_instructions():
    notes = render_raw(load_values(VALUES_SETS["gpu"]))["rectrain/templates/NOTES.txt"]
    assert "port-forward" in notes and "/healthz" in notes
    assert "GPU" in notes and "KubeRay" in notes
    assert "get secret rt-rectrain-api-tokens" in notes
    assert "admitted against 4 worker pod(s)" in notes and "waiting for the cluster to scale up" in notes


# --------------------------------------------------------------------------- GPU clusters


def _api_settings(docs):
    """The API's Settings as the chart configures them (the env entries with values)."""
    from services.settings import Settings

    env = env_of(one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["containers"][0])
    keep = ("RAY_ADDRESS", "RECTRAIN_AUTOSCALING_SHAPE", "RECTRAIN_RAY_GCS_ADDRESS")
    with mock.patch.dict(os.environ, {k: env[k]["value"] for k in keep if k in env}, clear=False):
        return Settings(redis_url="redis://unused:6379/0", reserve_memory_gb=0)


def test_values_gpu_admits_the_readme_example_job_and_scales_from_zero():
    """values-gpu.yaml: the API's capacity is the GPU worker group at maxReplicas
    (rendered RECTRAIN_AUTOSCALING_SHAPE), so the README's example job (4 workers x 1 GPU
    x 4 CPUs) is admitted with no worker running, and fits one 8-GPU pod."""
    from services.capacity import CapacityReader, job_demand, never_fits
    from trainer.spec import JobSpec

    docs = render_set("gpu")
    s = _api_settings(docs)
    assert s.worker_groups[0].model_dump() == {"replicas": 4, "cpus": 64, "gpus": 8, "memory_gb": 480}
    assert s.gcs_address == f"rt-rectrain-ray-head-svc.{NAMESPACE}.svc:6379"
    cap = asyncio.run(CapacityReader(s).read())
    spec = JobSpec.model_validate(yaml.safe_load((REPO / "deploy/examples/cluster-job-gpu.yaml").read_text()))
    d = job_demand(spec, s)
    assert (d.workers, d.gpus, d.cpus) == (4, 4, 16)
    assert never_fits(d, cap) is None
    assert d.gpus <= cap.node_gpus and d.cpus <= cap.node_cpus  # all on one node: NVLink
    # the shape follows the values: 2-GPU pods of 8 CPUs and 32Gi, 8 of them; num-cpus wins
    s = _api_settings(render_set("ci-gpu"))
    assert s.worker_groups[0].model_dump() == {"replicas": 8, "cpus": 8, "gpus": 2, "memory_gb": 32}
    docs = render_set("ci-gpu", {"ray": {"worker": {"rayStartParams": {"num-cpus": "6"}}}})
    assert _api_settings(docs).worker_groups[0].cpus == 6
    docs = render_set(
        "ci-gpu", {"ray": {"worker": {"resources": {"limits": {"cpu": "7500m", "memory": "500M"}}}}}
    )
    g = _api_settings(docs).worker_groups[0]
    assert g.cpus == 8 and abs(g.memory_gb - 500e6 / 2**30) < 1e-9


def test_gpu_pod_options_render_where_they_belong():
    """Kueue label on the RayCluster, pod labels/annotations (Multus), priority class on
    head and workers; runtime class, IPC_LOCK and NCCL settings on GPU workers only; the
    head's service account carries serviceAccount.annotations (cloud identity for the
    drivers); a ServiceMonitor scrapes the API with its bearer token."""
    docs = render_set("ci-gpu")
    rc = one(docs, "RayCluster")
    assert rc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    for label, meta, spec in pod_specs(docs):
        if not label.startswith("RayCluster/"):
            assert "priorityClassName" not in spec, label
            continue
        assert meta["labels"]["team"] == "recsys" and meta["labels"]["app.kubernetes.io/instance"] == "rt"
        assert meta["annotations"] == {"k8s.v1.cni.cncf.io/networks": "rdma-net"}
        assert spec["priorityClassName"] == "training-high"
        c = spec["containers"][0]
        caps = c["securityContext"]["capabilities"]
        env = env_of(c)
        if label == "RayCluster/head":
            assert "runtimeClassName" not in spec and "add" not in caps and "NCCL_DEBUG" not in env
        else:
            assert spec["runtimeClassName"] == "nvidia"
            assert caps == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
            assert env["NCCL_DEBUG"]["value"] == "INFO" and env["NCCL_IB_HCA"]["value"] == "mlx5"
            assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in env  # null drops a default
    sa = one(docs, "ServiceAccount", "-ray-autoscaler")
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/rectrain"
    }
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service", "-api")
    assert _matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [ep] = sm["spec"]["endpoints"]
    assert ep["port"] == svc["spec"]["ports"][0]["name"] and ep["path"] == "/metrics"
    assert ep["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "rectrain-metrics", "key": "token"},
    }
    servicemonitor_validator().validate(sm)
    bad = yaml.safe_load(yaml.safe_dump(sm))
    bad["spec"]["endpoints"][0]["bearerTokenSecrett"] = {}
    with pytest.raises(jsonschema.ValidationError):
        servicemonitor_validator().validate(bad)
