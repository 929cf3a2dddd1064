{{/* Chart name. */}}
{{- define "rectrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource. Kept to 40 characters so that derived names
(<fullname>-ray-head-svc, KubeRay's pod names) stay within Kubernetes limits.
*/}}
{{- define "rectrain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rectrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "rectrain.labels" -}}
helm.sh/chart: {{ include "rectrain.chart" . }}
{{ include "rectrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rectrain
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "rectrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rectrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Label that the Redis NetworkPolicy admits (API and Ray pods). */}}
{{- define "rectrain.redisClientLabel" -}}
rectrain.io/redis-client: "true"
{{- end }}

{{- define "rectrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rectrain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* API image. */}}
{{- define "rectrain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}

{{/* Ray head/worker image (defaults to the API image). */}}
{{- define "rectrain.rayImage" -}}
{{- $repo := default .Values.image.repository .Values.ray.image.repository }}
{{- $tag := default (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) .Values.ray.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{- define "rectrain.rayPullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.ray.image.pullPolicy }}
{{- end }}

{{/* Secret holding the API tokens. */}}
{{- define "rectrain.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-api-tokens" (include "rectrain.fullname" .) }}
{{- end }}
{{- end }}

{{- define "rectrain.tokenSecretKey" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecretKey }}
{{- else }}
{{- print "api-tokens" }}
{{- end }}
{{- end }}

{{/*
The "token:owner,..." string for the chart-made Secret: from auth.tokens, else the
value already in the cluster (kept on upgrade), else one random token for "admin".
*/}}
{{- define "rectrain.apiTokens" -}}
{{- if .Values.auth.tokens }}
{{- $pairs := list }}
{{- range $i, $t := .Values.auth.tokens }}
{{- if or (not $t.token) (not $t.owner) }}
{{- fail (printf "auth.tokens[%d]: both token and owner are required" $i) }}
{{- end }}
{{- if or (regexMatch "[,:\\s]" (toString $t.token)) (regexMatch "[,:\\s]" (toString $t.owner)) }}
{{- fail (printf "auth.tokens[%d]: token and owner may not contain ',', ':' or spaces" $i) }}
{{- end }}
{{- if lt (len (toString $t.token)) 24 }}
{{- fail (printf "auth.tokens[%d]: tokens need at least 24 characters (the API refuses shorter ones in production)" $i) }}
{{- end }}
{{- $pairs = append $pairs (printf "%s:%s" (toString $t.token) (toString $t.owner)) }}
{{- end }}
{{- join "," $pairs }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "rectrain.tokenSecretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "api-tokens") }}
{{- index $existing.data "api-tokens" | b64dec }}
{{- else }}
{{- printf "%s:admin" (randAlphaNum 40) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the in-release Redis (StatefulSet and Service). */}}
{{- define "rectrain.redisName" -}}
{{- printf "%s-redis" (include "rectrain.fullname" .) }}
{{- end }}

{{- define "rectrain.externalRedisSecretName" -}}
{{- if .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecret }}
{{- else }}
{{- printf "%s-redis-url" (include "rectrain.fullname" .) }}
{{- end }}
{{- end }}

{{- define "rectrain.externalRedisSecretKey" -}}
{{- if .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecretKey }}
{{- else }}
{{- print "redis-url" }}
{{- end }}
{{- end }}

{{/* REDIS_URL env entry: the in-release Redis, or the external URL from a Secret. */}}
{{- define "rectrain.redisUrlEnv" -}}
- name: REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s.%s.svc:6379/0" (include "rectrain.redisName" .) .Release.Namespace | quote }}
{{- else }}
{{- if not (or .Values.externalRedis.url .Values.externalRedis.existingSecret) }}
{{- fail "redis.enabled=false needs externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
  valueFrom:
    secretKeyRef:
      name: {{ include "rectrain.externalRedisSecretName" . }}
      key: {{ include "rectrain.externalRedisSecretKey" . }}
{{- end }}
{{- end }}

{{/* Name of the RayCluster; KubeRay names its head service <name>-head-svc. */}}
{{- define "rectrain.rayClusterName" -}}
{{- printf "%s-ray" (include "rectrain.fullname" .) }}
{{- end }}

{{/* The Ray Jobs API URL the API submits to. */}}
{{- define "rectrain.rayAddress" -}}
{{- if .Values.ray.address }}
{{- .Values.ray.address }}
{{- else if .Values.ray.enabled }}
{{- printf "http://%s-head-svc.%s.svc:8265" (include "rectrain.rayClusterName" .) .Release.Namespace }}
{{- else }}
{{- fail "ray.enabled=false needs ray.address (the Ray Jobs API URL of an existing cluster)" }}
{{- end }}
{{- end }}

{{/* The ReadWriteMany claim mounted at /data, if any. */}}
{{- define "rectrain.dataClaim" -}}
{{- default .Values.data.existingClaim .Values.storage.existingClaim }}
{{- end }}

{{/* RECTRAIN_STORAGE_URI: storage.uri, else /data on a shared claim, else empty. */}}
{{- define "rectrain.storageUri" -}}
{{- $uri := toString .Values.storage.uri }}
{{- $claim := include "rectrain.dataClaim" . }}
{{- if and $uri (not (contains "://" $uri)) (not $claim) }}
{{- fail "storage.uri: a path is shared only on a ReadWriteMany claim: set storage.existingClaim, or use s3://bucket/prefix" }}
{{- end }}
{{- if and $uri (not (contains "://" $uri)) (not (hasPrefix "/data" $uri)) }}
{{- fail "storage.uri: a path must lie under /data, where storage.existingClaim is mounted" }}
{{- end }}
{{- if regexMatch "[?&](access_key|secret_key|session_token)=" $uri }}
{{- fail "storage.uri: credentials do not belong in the URI; put them in the Secret named by storage.credentialsSecret" }}
{{- end }}
{{- if and (not $uri) (not $claim) (not .Values.storage.allowPodLocal) }}
{{- fail "storage: Ray workers run on other pods than the head and write checkpoints and results there, so jobs need storage every pod reaches: set storage.uri (s3://bucket/prefix; credentials in storage.credentialsSecret, or the pods' identity through serviceAccount.annotations) or storage.existingClaim (a ReadWriteMany claim mounted at /data). storage.allowPodLocal=true renders without (checkpoints then fail once a worker runs on another pod)." }}
{{- end }}
{{- if $uri }}{{ $uri }}{{ else if $claim }}/data{{ end }}
{{- end }}

{{/* Storage settings shared by the API and the Ray containers (env entries). */}}
{{- define "rectrain.storageEnv" -}}
{{- $uri := include "rectrain.storageUri" . }}
{{- if $uri }}
- name: RECTRAIN_STORAGE_URI
  value: {{ $uri | quote }}
{{- end }}
{{- with .Values.storage.dataRoots }}
- name: RECTRAIN_DATA_ROOTS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}

{{/* envFrom of the object store's credentials Secret (empty when none). */}}
{{- define "rectrain.storageEnvFrom" -}}
{{- with .Values.storage.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}

{{/* Name of the head's ServiceAccount when the autoscaler runs in it. */}}
{{- define "rectrain.autoscalerServiceAccountName" -}}
{{- printf "%s-ray-autoscaler" (include "rectrain.fullname" .) }}
{{- end }}

{{/* /data volume (shared claim or emptyDir). */}}
{{- define "rectrain.dataVolume" -}}
- name: data
{{- $claim := include "rectrain.dataClaim" . }}
{{- if $claim }}
  persistentVolumeClaim:
    claimName: {{ $claim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.data.sizeLimit }}
{{- end }}
{{- end }}

{{/* Environment of the Ray head and worker containers. */}}
{{- define "rectrain.rayEnv" -}}
{{ include "rectrain.redisUrlEnv" . }}
- name: RECTRAIN_ENV
  value: {{ .Values.api.environment | quote }}
- name: RECTRAIN_DATA_DIR
  value: /data
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{ include "rectrain.clusterSecretsEnv" . }}
{{- include "rectrain.storageEnv" . }}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Ray CPUs of a Kubernetes cpu quantity ("8", "7500m"), rounded up as KubeRay does. */}}
{{- define "rectrain.rayCpus" -}}
{{- $q := toString . }}
{{- if hasSuffix "m" $q }}{{ ceil (divf (trimSuffix "m" $q | float64) 1000) }}{{ else }}{{ ceil ($q | float64) }}{{ end }}
{{- end }}

{{/* GiB of a Kubernetes memory quantity ("32Gi", "500M", "1Ti", bytes). */}}
{{- define "rectrain.memoryGiB" -}}
{{- $q := toString . }}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "K" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 }}
{{- $bytes := -1.0 }}
{{- range $suf := list "Ki" "Mi" "Gi" "Ti" "K" "M" "G" "T" }}
{{- if and (lt $bytes 0.0) (hasSuffix $suf $q) }}
{{- $bytes = mulf (trimSuffix $suf $q | float64) (get $units $suf) }}
{{- end }}
{{- end }}
{{- if lt $bytes 0.0 }}{{ $bytes = $q | float64 }}{{ end }}
{{- divf $bytes 1073741824.0 }}
{{- end }}

{{/* RECTRAIN_AUTOSCALING_SHAPE: the worker group at maxReplicas, with the Ray resources
KubeRay gives each pod (num-cpus from the cpu limit, num-gpus from the GPU limit,
memory from the memory limit, unless rayStartParams set them). */}}
{{- define "rectrain.autoscalingShape" -}}
{{- $w := .Values.ray.worker }}
{{- $p := default dict $w.rayStartParams }}
{{- $lim := default dict $w.resources.limits }}
{{- $req := default dict $w.resources.requests }}
{{- $cpu := get $p "num-cpus" | default (get $lim "cpu") | default (get $req "cpu") }}
{{- if not $cpu }}
{{- fail "ray.worker.resources: set limits.cpu (or rayStartParams.num-cpus): the autoscaling cluster's capacity is maxReplicas x each worker pod's CPUs" }}
{{- end }}
{{- $mem := get $lim "memory" | default (get $req "memory") }}
{{- if not $mem }}
{{- fail "ray.worker.resources: set limits.memory: the autoscaling cluster's capacity is maxReplicas x each worker pod's memory" }}
{{- end }}
{{- $memGiB := include "rectrain.memoryGiB" $mem | float64 }}
{{- with get $p "memory" }}{{ $memGiB = divf (toString . | float64) 1073741824.0 }}{{ end }}
{{- $gpus := get $p "num-gpus" | default $w.gpus }}
{{- $g := dict "replicas" (int $w.maxReplicas) "cpus" (include "rectrain.rayCpus" $cpu | float64) "gpus" (toString $gpus | float64) "memory_gb" $memGiB }}
{{- list $g | toJson }}
{{- end }}

{{/* GCS address of the chart's Ray head (the dispatcher asks the autoscaler through it). */}}
{{- define "rectrain.rayGcsAddress" -}}
{{- printf "%s-head-svc.%s.svc:6379" (include "rectrain.rayClusterName" .) .Release.Namespace }}
{{- end }}

{{/* The Secret shared by the API and the Ray pods: Ray's auth token, the checkpoint key. */}}
{{- define "rectrain.clusterSecretName" -}}
{{- printf "%s-cluster" (include "rectrain.fullname" .) }}
{{- end }}

{{/* A random value of the cluster Secret, kept on upgrade (lookup), created once. */}}
{{- define "rectrain.clusterSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace (include "rectrain.clusterSecretName" .ctx) }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}

{{/* Env of the API and every Ray pod: Ray's token auth (the RayCluster is reachable from
other pods, so it never runs without it) and the key that signs checkpoints (the same on
the API, which verifies them, and on the workers, which write them). */}}
{{- define "rectrain.clusterSecretsEnv" -}}
- name: RECTRAIN_CHECKPOINT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "rectrain.clusterSecretName" . }}
      key: checkpoint-secret
{{- if .Values.ray.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "rectrain.clusterSecretName" . }}
      key: ray-auth-token
{{- end }}
{{- end }}

{{/*
The control plane's environment, the same on the API and the worker (services/settings.py
reads it in both): Redis, Ray, tokens, data, storage, cluster secrets, autoscaling.
*/}}
{{- define "rectrain.controlPlaneEnv" -}}
{{- include "rectrain.redisUrlEnv" . | nindent 0 }}
- name: RAY_ADDRESS
  value: {{ include "rectrain.rayAddress" . | quote }}
- name: RECTRAIN_API_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ include "rectrain.tokenSecretName" . }}
      key: {{ include "rectrain.tokenSecretKey" . }}
- name: RECTRAIN_ENV
  value: {{ .Values.api.environment | quote }}
- name: RECTRAIN_DATA_DIR
  value: /data
- name: HOME
  value: /tmp
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- include "rectrain.clusterSecretsEnv" . | nindent 0 }}
{{- include "rectrain.storageEnv" . | nindent 0 }}
{{- if and .Values.ray.enabled .Values.ray.enableInTreeAutoscaling }}
# capacity is the worker group at maxReplicas; queued jobs ask the autoscaler through the GCS
- name: RECTRAIN_AUTOSCALING_SHAPE
  value: {{ include "rectrain.autoscalingShape" . | quote }}
- name: RECTRAIN_RAY_GCS_ADDRESS
  value: {{ include "rectrain.rayGcsAddress" . | quote }}
{{- end }}
{{- end }}
