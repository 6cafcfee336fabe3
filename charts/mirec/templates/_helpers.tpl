{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "mirec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Names of the objects are "<fullname>-<component>", so the fullname is
cut to 40 characters to leave room for the longest suffix ("-serving-metrics", CronJob job ids).
*/}}
{{- define "mirec.fullname" -}}
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

{{- define "mirec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "mirec.labels" -}}
helm.sh/chart: {{ include "mirec.chart" . }}
{{ include "mirec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mirec
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels (stable across upgrades: never add version-like labels here). */}}
{{- define "mirec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mirec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: include "mirec.componentLabels" (list $ "serving") */}}
{{- define "mirec.componentLabels" -}}
{{ include "mirec.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}
{{- define "mirec.componentSelectorLabels" -}}
{{ include "mirec.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "mirec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mirec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference from {repository, tag, digest}: digest wins over tag; an empty tag falls back to
the second argument. Usage: include "mirec.image" (list .Values.image .Chart.AppVersion)
*/}}
{{- define "mirec.image" -}}
{{- $img := index . 0 }}
{{- $defaultTag := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $defaultTag $img.tag | toString) }}
{{- end }}
{{- end }}

{{- define "mirec.appImage" -}}
{{- include "mirec.image" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/*
mirec's TorchServe image (Dockerfile target `torchserve`): tag "" = the chart's appVersion; with
torchserve.gpu.enabled the CUDA build, torchserve.gpu.imageTag or "<tag>-gpu". A digest wins over both.
*/}}
{{- define "mirec.torchserveImage" -}}
{{- $img := deepCopy .Values.torchserve.image }}
{{- $tag := default .Chart.AppVersion $img.tag | toString }}
{{- if .Values.torchserve.gpu.enabled }}
{{- $tag = default (printf "%s-gpu" $tag) .Values.torchserve.gpu.imageTag | toString }}
{{- end }}
{{- $_ := set $img "tag" $tag }}
{{- include "mirec.image" (list $img .Chart.AppVersion) }}
{{- end }}

{{/* Where the TorchServe image writes its logs (LOG_LOCATION, METRICS_LOCATION): an emptyDir. */}}
{{- define "mirec.torchserveLogDir" -}}/home/model-server/logs{{- end }}

{{/* Whether the TorchServe container runs inside the serving pod (standalone mode). */}}
{{- define "mirec.torchserveLocal" -}}
{{- if not .Values.kserve.enabled }}true{{- end }}
{{- end }}

{{/* Short: KServe/Knative append "-predictor-00001-private" and friends to it (63-char DNS labels). */}}
{{- define "mirec.kserveName" -}}
{{- printf "%s-ts" (include "mirec.fullname" . | trunc 30 | trimSuffix "-") }}
{{- end }}

{{/* URL of TorchServe's inference API as the recommendation API sees it. */}}
{{- define "mirec.torchserveUrl" -}}
{{- if .Values.kserve.enabled }}
{{- default (printf "http://%s-predictor.%s.svc.cluster.local" (include "mirec.kserveName" .) .Release.Namespace) .Values.kserve.url }}
{{- else }}
{{- printf "http://127.0.0.1:%d" (int .Values.torchserve.ports.inference) }}
{{- end }}
{{- end }}

{{/* Where TorchServe writes key_file.json (its working directory); shared read-only with the API. */}}
{{- define "mirec.tokenDir" -}}/var/run/torchserve{{- end }}

{{/* Shared PVC: served-request log (API writes, CronJob reads), Feast file registry, monitor output. */}}
{{- define "mirec.sharedClaimName" -}}
{{- default (printf "%s-shared" (include "mirec.fullname" .)) .Values.sharedStorage.existingClaim }}
{{- end }}

{{- define "mirec.modelStoreClaimName" -}}
{{- default (printf "%s-model-store" (include "mirec.fullname" .)) .Values.torchserve.modelStore.pvc.existingClaim }}
{{- end }}

{{/* Redis */}}
{{- define "mirec.redisEnabled" -}}
{{- if and .Values.feast.enabled (eq .Values.feast.onlineStore.type "redis") }}true{{- end }}
{{- end }}
{{- define "mirec.redisDeploy" -}}
{{- if and (include "mirec.redisEnabled" .) .Values.feast.onlineStore.redis.deploy }}true{{- end }}
{{- end }}
{{- define "mirec.redisHost" -}}
{{- if .Values.feast.onlineStore.redis.deploy }}
{{- printf "%s-redis" (include "mirec.fullname" .) }}
{{- else }}
{{- required "feast.onlineStore.redis.external.host is required when feast.onlineStore.redis.deploy=false" .Values.feast.onlineStore.redis.external.host }}
{{- end }}
{{- end }}
{{- define "mirec.redisPort" -}}
{{- if .Values.feast.onlineStore.redis.deploy }}6379{{- else }}{{ .Values.feast.onlineStore.redis.external.port }}{{- end }}
{{- end }}
{{- define "mirec.redisSecretName" -}}
{{- default (printf "%s-redis" (include "mirec.fullname" .)) .Values.feast.onlineStore.redis.auth.existingSecret }}
{{- end }}
{{- define "mirec.redisSecretKey" -}}
{{- if .Values.feast.onlineStore.redis.auth.existingSecret }}{{ .Values.feast.onlineStore.redis.auth.existingSecretKey }}{{- else }}redis-password{{- end }}
{{- end }}

{{/* env entry with the Redis password, for Feast's ${REDIS_PASSWORD} expansion */}}
{{- define "mirec.redisPasswordEnv" -}}
{{- if and (include "mirec.redisEnabled" .) .Values.feast.onlineStore.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mirec.redisSecretName" . }}
      key: {{ include "mirec.redisSecretKey" . }}
{{- end }}
{{- with (.Values.feast.registryPasswordSecret | default dict).name }}
# ${FEAST_REGISTRY_PASSWORD} in feast.registry.path (the SQL registry's URL), expanded by Feast
- name: FEAST_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.feast.registryPasswordSecret.key | default "password" }}
{{- end }}
{{- end }}

{{- /* The environment of a container that reads the release store: credentials Secret + endpoint. */ -}}
{{- define "mirec.releaseEnv" -}}
- name: HOME
  value: /tmp
{{- with .Values.release.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- define "mirec.releaseEnvFrom" -}}
{{- with .Values.release.credentialsSecret }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- end }}

{{- define "mirec.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}
{{- define "mirec.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* Writable scratch space for a read-only root filesystem. */}}
{{- define "mirec.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .sizeLimit | default "512Mi" }}
{{- end }}

{{/*
Fail early on values that the JSON schema cannot express.
*/}}
{{- define "mirec.validate" -}}
{{- $arms := .Values.api.settings.experiment.arms }}
{{- $total := 0.0 }}
{{- $armNames := list }}
{{- range $arms }}
{{- $total = addf $total .weight }}
{{- if has .name $armNames }}
{{- fail (printf "api.settings.experiment.arms: arm name %q is used twice" .name) }}
{{- end }}
{{- $armNames = append $armNames .name }}
{{- end }}
{{- if or (lt $total 0.999) (gt $total 1.001) }}
{{- fail (printf "api.settings.experiment.arms: weights must sum to 1, they sum to %v" $total) }}
{{- end }}
{{- if not .Values.kserve.enabled }}
{{- $models := list }}
{{- range .Values.torchserve.models }}
{{- if has .name $models }}
{{- fail (printf "torchserve.models: model name %q is listed twice" .name) }}
{{- end }}
{{- $models = append $models .name }}
{{- $m := merge (deepCopy .) (deepCopy $.Values.torchserve.modelDefaults) }}
{{- if gt (int $m.minWorkers) (int $m.maxWorkers) }}
{{- fail (printf "torchserve.models[%s]: minWorkers (%v) > maxWorkers (%v)" .name $m.minWorkers $m.maxWorkers) }}
{{- end }}
{{- end }}
{{- range $arms }}
{{- if not (has .model $models) }}
{{- fail (printf "api.settings.experiment.arms: arm %q serves model %q, which is not in torchserve.models %v" .name .model $models) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.torchserve.modelStore.type "release") (not .Values.release.uri) }}
{{- fail "torchserve.modelStore.type=release needs release.uri (the training pipeline's values-release.yaml)" }}
{{- end }}
{{- if and (eq .Values.torchserve.modelStore.type "url") (not .Values.torchserve.modelStore.url.baseUrl) }}
{{- fail "torchserve.modelStore.url.baseUrl is required when torchserve.modelStore.type=url" }}
{{- end }}
{{- range $k, $v := .Values.torchserve.extraConfig }}
{{- if has $k (list "disable_token_authorization" "enable_model_api" "enable_envvars_config" "inference_address" "management_address" "metrics_address" "metrics_mode" "model_store" "model_snapshot" "load_models" "models") }}
{{- fail (printf "torchserve.extraConfig.%s is managed by the chart (token auth stays on, the management API stays on 127.0.0.1) and cannot be overridden" $k) }}
{{- end }}
{{- end }}
{{- else }}
{{- if not (or .Values.kserve.storageUri .Values.release.uri) }}
{{- fail "kserve.storageUri (or release.uri) is required when kserve.enabled=true" }}
{{- end }}
{{- end }}
{{- if ge (int .Values.serving.preStopDelaySeconds) (int .Values.serving.terminationGracePeriodSeconds) }}
{{- fail "serving.preStopDelaySeconds must be below serving.terminationGracePeriodSeconds (else the kubelet kills the containers before they stop cleanly)" }}
{{- end }}
{{- $redis := .Values.feast.onlineStore.redis }}
{{- if and .Values.feast.enabled (eq .Values.feast.onlineStore.type "redis") $redis.deploy $redis.persistence.enabled }}
{{- $max := include "mirec.bytes" $redis.maxmemory | float64 }}
{{- $limit := include "mirec.bytes" $redis.resources.limits.memory | float64 }}
{{- if gt $max (mulf $limit 0.6) }}
{{- fail (printf "feast.onlineStore.redis.maxmemory %s is above 60%% of the memory limit %s: with persistence (AOF) a rewrite forks Redis and copy-on-write needs the headroom (OOM kill)" $redis.maxmemory $redis.resources.limits.memory) }}
{{- end }}
{{- end }}
{{- if and .Values.serving.autoscaling.enabled (gt (int .Values.serving.autoscaling.minReplicas) (int .Values.serving.autoscaling.maxReplicas)) }}
{{- fail "serving.autoscaling.minReplicas must be <= serving.autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{- define "mirec.modelStoreMountPath" -}}/home/model-server/model-store{{- end }}

{{/* A path under the shared volume unless absolute: include "mirec.sharedPath" (list mountPath path) */}}
{{- define "mirec.sharedPath" -}}
{{- $p := index . 1 -}}
{{- if hasPrefix "/" $p }}{{ $p }}{{ else }}{{ printf "%s/%s" (index . 0) $p }}{{ end }}
{{- end }}

{{/* Bytes of a Redis size (3gb, 256mb, 512kb) or a Kubernetes quantity (4Gi, 400Mi, 1G). */}}
{{- define "mirec.bytes" -}}
{{- $s := lower (toString .) -}}
{{- $units := list (list "gib" 1073741824) (list "mib" 1048576) (list "kib" 1024) (list "gi" 1073741824) (list "mi" 1048576) (list "ki" 1024) (list "gb" 1073741824) (list "mb" 1048576) (list "kb" 1024) (list "g" 1000000000) (list "m" 1000000) (list "k" 1000) -}}
{{- $out := "" -}}
{{- range $units -}}
{{- if and (not $out) (hasSuffix (index . 0) $s) -}}
{{- $out = mulf (trimSuffix (index . 0) $s | float64) (index . 1) | int64 | toString -}}
{{- end -}}
{{- end -}}
{{- if not $out }}{{ $out = $s | int64 | toString }}{{ end -}}
{{ $out }}
{{- end }}
