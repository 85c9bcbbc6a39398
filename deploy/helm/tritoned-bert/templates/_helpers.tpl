{{/* Names, labels and the pod spec shared by the Deployment and the KServe InferenceService. */}}

{{- define "tritoned-bert.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects: <release> when it already contains the chart's name, else <release>-<chart>. */}}
{{- define "tritoned-bert.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tritoned-bert.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tritoned-bert.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tritoned-bert.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tritoned-bert.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | toString | trunc 63 | quote }}
app.kubernetes.io/component: inference
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tritoned-bert.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "tritoned-bert.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tritoned-bert.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the admin key: the user's, or the chart's own when adminKey.value is given. */}}
{{- define "tritoned-bert.adminSecretName" -}}
{{- if .Values.adminKey.existingSecret }}
{{- .Values.adminKey.existingSecret }}
{{- else if .Values.adminKey.value }}
{{- printf "%s-admin-key" (include "tritoned-bert.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Refuse settings that would break the server or its rollout, with the fix in the message. */}}
{{- define "tritoned-bert.checks" -}}
{{- $needed := add .Values.lifecycle.preStopSleepSeconds .Values.server.shutdownSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed lifecycle.preStopSleepSeconds + server.shutdownSeconds (%v): raise it, or in-flight requests are cut off by SIGKILL" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- /* What serve_image.sh sets itself (docker run IMAGE --help); tests/test_helm_chart.py keeps the two equal. */}}
{{- $reserved := list "--model-repository" "--model-store" "--disable-auto-complete-config" "--strict-readiness" "--exit-on-error" "--model-control-mode" "--load-model" "--http-restricted-api" "--grpc-restricted-protocol" "--allow-http" "--allow-grpc" "--http-address" "--http-port" "--grpc-address" "--grpc-port" "--metrics-address" "--metrics-port" }}
{{- range .Values.server.extraArgs }}
{{- $option := regexReplaceAll "=.*$" . "" }}
{{- if has $option $reserved }}
{{- fail (printf "server.extraArgs: %s is set by the image's entrypoint (docker run IMAGE --help lists what it sets); tritonserver would get it twice" $option) }}
{{- end }}
{{- end }}
{{- if eq (toString .Values.image.tag) "latest" }}
{{- fail "image.tag: give a fixed tag (e.g. v1), not latest: pods would run whatever latest was when each started, and changing the image would start no rolling update" }}
{{- end }}
{{- if and .Values.adminKey.existingSecret .Values.adminKey.value }}
{{- fail "adminKey: give existingSecret or value, not both" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.queueTime.enabled) }}
{{- fail "autoscaling is enabled with no metric: set autoscaling.targetCPUUtilizationPercentage or autoscaling.queueTime.enabled" }}
{{- end }}
{{- end }}

{{/* Probes: startup and readiness ask the readiness URL; liveness execs probes.livenessCommand when set. */}}
{{- define "tritoned-bert.probes" -}}
startupProbe:
  httpGet:
    path: {{ .Values.probes.readinessPath }}
    port: {{ .Values.containerPorts.http }}
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: {{ .Values.probes.readinessPath }}
    port: {{ .Values.containerPorts.http }}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  successThreshold: {{ .Values.probes.readiness.successThreshold }}
livenessProbe:
  {{- if .Values.probes.livenessCommand }}
  exec:
    command:
      {{- toYaml .Values.probes.livenessCommand | nindent 6 }}
  {{- else }}
  httpGet:
    path: {{ .Values.probes.readinessPath }}
    port: {{ .Values.containerPorts.http }}
  {{- end }}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
{{- end }}

{{/* The server container, without its name and ports (the Deployment and KServe name them differently). */}}
{{- define "tritoned-bert.containerBody" -}}
image: {{ include "tritoned-bert.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.server.extraArgs }}
args:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if or (include "tritoned-bert.adminSecretName" .) .Values.server.extraEnv }}
env:
  {{- if include "tritoned-bert.adminSecretName" . }}
  - name: TRITONED_ADMIN_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "tritoned-bert.adminSecretName" . }}
        key: {{ .Values.adminKey.secretKey }}
  {{- end }}
  {{- with .Values.server.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{ include "tritoned-bert.probes" . }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.lifecycle.preStopSleepSeconds }}"]
{{- /* limits.cpu is the one CPU number: requests.cpu follows it unless set; the server sizes itself from it. */}}
resources:
  requests:
    {{- toYaml (merge (deepCopy .Values.resources.requests) (dict "cpu" .Values.resources.limits.cpu)) | nindent 4 }}
  limits:
    {{- toYaml .Values.resources.limits | nindent 4 }}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: shm
    mountPath: /dev/shm
  - name: tmp
    mountPath: /tmp
{{- end }}

{{/* Pod-level fields shared by the Deployment's template and the KServe predictor. */}}
{{- define "tritoned-bert.podFields" -}}
serviceAccountName: {{ include "tritoned-bert.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .Values.shm.sizeLimit }}
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- end }}

{{/* Pod annotations: Prometheus scraping of the metrics port. */}}
{{- define "tritoned-bert.podAnnotations" -}}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.containerPorts.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* PromQL: the ensemble's average queue time per request (microseconds) over this release's pods in the last
minute; 0 without requests. Labels as Prometheus's kubernetes_sd gives them (namespace, pod). */}}
{{- define "tritoned-bert.queueTimeQuery" -}}
{{- $match := printf "namespace=\"%s\",pod=~\"%s-.*\",model=\"%s\"" .Release.Namespace (include "tritoned-bert.fullname" .) .Values.modelName -}}
sum(rate(nv_inference_queue_duration_us{ {{- $match -}} }[1m])) / clamp_min(sum(rate(nv_inference_request_success{ {{- $match -}} }[1m])), 1e-6)
{{- end }}
