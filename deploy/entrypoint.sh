#!/usr/bin/env bash
# rectrain container entrypoint: one image, four roles.
#
#   api         the FastAPI control plane:  rectrain serve --host 0.0.0.0 --port 8000
#               (the API and a worker process; `api --loops off`: the API alone, for
#               deployments that run the worker role separately, e.g. the Helm chart)
#   worker      the control loops (dispatcher, reaper, study reconciler): rectrain worker
#   ray-head    a Ray head node with the dashboard (and its Jobs API) on 0.0.0.0:8265
#   ray-worker  a Ray worker joining $RAY_HEAD_ADDRESS (host:port of the head's GCS)
#
# Anything else is executed as a command (e.g. `rectrain run spec.yaml`, `bash`).
# Extra flags per role come from environment variables:
#   RECTRAIN_API_HOST / RECTRAIN_API_PORT        (api; defaults 0.0.0.0 / 8000)
#   RAY_HEAD_PORT / RAY_DASHBOARD_PORT           (ray-head; defaults 6379 / 8265)
#   RAY_NUM_CPUS / RAY_NUM_GPUS                  (both Ray roles; default: detected)
#   RAY_HEAD_EXTRA_ARGS / RAY_WORKER_EXTRA_ARGS  (appended verbatim to `ray start`)
# Under KubeRay the operator runs `ray start` itself and this script is not used
# for the Ray pods.
set -euo pipefail

role="${1:-api}"
if [ "$#" -gt 0 ]; then shift; fi

ray_resource_args=()
[ -n "${RAY_NUM_CPUS:-}" ] && ray_resource_args+=("--num-cpus=${RAY_NUM_CPUS}")
[ -n "${RAY_NUM_GPUS:-}" ] && ray_resource_args+=("--num-gpus=${RAY_NUM_GPUS}")

case "$role" in
  api)
    exec rectrain serve --host "${RECTRAIN_API_HOST:-0.0.0.0}" --port "${RECTRAIN_API_PORT:-8000}" "$@"
    ;;
  worker)
    exec rectrain worker "$@"
    ;;
  ray-head)
    # shellcheck disable=SC2086  # extra args are meant to word-split
    exec ray start --head --block \
      --port="${RAY_HEAD_PORT:-6379}" \
      --dashboard-host=0.0.0.0 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
      --include-dashboard=true --disable-usage-stats \
      "${ray_resource_args[@]}" ${RAY_HEAD_EXTRA_ARGS:-} "$@"
    ;;
  ray-worker)
    if [ -z "${RAY_HEAD_ADDRESS:-}" ]; then
      echo "rectrain entrypoint: ray-worker needs RAY_HEAD_ADDRESS=host:port of the Ray head" >&2
      exit 64
    fi
    # shellcheck disable=SC2086
    exec ray start --address="${RAY_HEAD_ADDRESS}" --block --disable-usage-stats \
      "${ray_resource_args[@]}" ${RAY_WORKER_EXTRA_ARGS:-} "$@"
    ;;
  -h|--help|help)
    sed -n '2,18p' "$0"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
