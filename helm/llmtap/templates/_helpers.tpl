{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "llmtap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "llmtap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmtap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "llmtap.labels" -}}
helm.sh/chart: {{ include "llmtap.chart" . }}
{{ include "llmtap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmtap
{{- end }}

{{/* Selector labels: immutable on a Deployment, so never add to them. */}}
{{- define "llmtap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmtap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "llmtap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llmtap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llmtap.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The OTLP port matching otel.protocol. */}}
{{- define "llmtap.otlpPort" -}}
{{- if eq .Values.otel.protocol "grpc" }}4317{{ else }}4318{{ end }}
{{- end }}

{{/* The OTLP endpoint the proxy exports to, per collector.mode; empty for the SDK default. */}}
{{- define "llmtap.otlpEndpoint" -}}
{{- if eq .Values.collector.mode "sidecar" }}
{{- printf "http://127.0.0.1:%s" (include "llmtap.otlpPort" .) }}
{{- else if eq .Values.collector.mode "agent" }}
{{- printf "http://$(HOST_IP):%v" (.Values.collector.agent.port | default (include "llmtap.otlpPort" .)) }}
{{- else }}
{{- .Values.otel.endpoint }}
{{- end }}
{{- end }}

{{/* The proxy's config file (keys as llmtap serve --config reads them). */}}
{{- define "llmtap.proxyConfig" -}}
{{- $config := dict "drain_timeout" .Values.proxy.drainTimeoutSeconds }}
{{- with .Values.proxy.upstream }}{{ $_ := set $config "upstream" . }}{{ end }}
{{- if not (kindIs "invalid" .Values.proxy.maxBodyBytes) }}{{ $_ := set $config "max_body_bytes" .Values.proxy.maxBodyBytes }}{{ end }}
{{- if not (kindIs "invalid" .Values.proxy.connectTimeoutSeconds) }}{{ $_ := set $config "connect_timeout" .Values.proxy.connectTimeoutSeconds }}{{ end }}
{{- if not (kindIs "invalid" .Values.proxy.readTimeoutSeconds) }}{{ $_ := set $config "read_timeout" .Values.proxy.readTimeoutSeconds }}{{ end }}
{{- if not (kindIs "invalid" .Values.proxy.coldStartIdleSeconds) }}{{ $_ := set $config "cold_start_idle" .Values.proxy.coldStartIdleSeconds }}{{ end }}
{{- with .Values.proxy.referenceTokenizer }}{{ $_ := set $config "reference_tokenizer" . }}{{ end }}
{{- with .Values.routes }}{{ $_ := set $config "routes" . }}{{ end }}
{{- toYaml $config }}
{{- end }}

{{/* Checks across values that values.schema.json cannot express. Fails with a message naming the value. */}}
{{- define "llmtap.validate" -}}
{{- if and (not .Values.proxy.upstream) (not .Values.routes) }}
{{- fail "llmtap: set proxy.upstream or at least one entry in routes: the proxy needs somewhere to forward to" }}
{{- end }}
{{- $prefixes := list }}
{{- range $i, $route := .Values.routes }}
{{- $prefix := trimSuffix "/" $route.prefix | default "/" }}
{{- if has $prefix $prefixes }}
{{- fail (printf "llmtap: routes[%d].prefix %q is declared twice" $i $route.prefix) }}
{{- end }}
{{- if and (eq $prefix "/") $.Values.proxy.upstream }}
{{- fail (printf "llmtap: routes[%d] has prefix \"/\", which proxy.upstream already claims; clear one of them" $i) }}
{{- end }}
{{- $prefixes = append $prefixes $prefix }}
{{- end }}
{{- /* every ${VAR} in a route header must be an environment variable the pod has */}}
{{- $known := dict }}
{{- range $name, $_ := .Values.upstreamSecrets.keys }}{{ $_ := set $known $name true }}{{ end }}
{{- range .Values.extraEnv }}{{ $_ := set $known .name true }}{{ end }}
{{- range $i, $route := .Values.routes }}
{{- range $header, $value := $route.headers }}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}" (toString $value) -1 }}
{{- $var := trimSuffix "}" (trimPrefix "${" .) }}
{{- if and (not (hasKey $known $var)) (not $.Values.extraEnvFrom) }}
{{- fail (printf "llmtap: routes[%d].headers.%s references ${%s}, but no such variable is set: add it to upstreamSecrets.keys (with upstreamSecrets.existingSecret) or extraEnv" $i $header $var) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.proxy.workers) 1) .Values.metrics.enabled }}
{{- fail (printf "llmtap: proxy.workers (%v) > 1 cannot be combined with metrics.enabled: each worker holds its own metrics, and one Prometheus port would show only one of them. Keep proxy.workers 1 and scale replicas, or export metrics over OTLP to a collector that Prometheus scrapes (docs/deploy.md, Workers and sizing)" .Values.proxy.workers) }}
{{- end }}
{{- if and .Values.upstreamSecrets.keys (not .Values.upstreamSecrets.existingSecret) }}
{{- fail "llmtap: upstreamSecrets.keys is set but upstreamSecrets.existingSecret is empty: name the Secret that holds the keys" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail (printf "llmtap: autoscaling.maxReplicas (%v) is below autoscaling.minReplicas (%v)" .Values.autoscaling.maxReplicas .Values.autoscaling.minReplicas) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "llmtap: autoscaling on CPU utilization needs resources.requests.cpu (utilization is measured against the request)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetMemoryUtilizationPercentage (not (dig "requests" "memory" "" .Values.resources)) }}
{{- fail "llmtap: autoscaling on memory utilization needs resources.requests.memory" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.proxy.port)) }}
{{- fail (printf "llmtap: metrics.port and proxy.port are both %v: the Prometheus endpoint needs its own port" .Values.proxy.port) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "llmtap: podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "llmtap: metrics.serviceMonitor.enabled needs metrics.enabled: true (the proxy's Prometheus endpoint)" }}
{{- end }}
{{- if and (eq .Values.collector.mode "none") (ne .Values.otel.endpoint "") (not (regexMatch "^https?://" .Values.otel.endpoint)) }}
{{- fail (printf "llmtap: otel.endpoint must be an http:// or https:// URL, got %q" .Values.otel.endpoint) }}
{{- end }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- $needed := add .Values.proxy.drainTimeoutSeconds .Values.preStopSleepSeconds }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 $needed) }}
{{- fail (printf "llmtap: terminationGracePeriodSeconds (%v) must exceed proxy.drainTimeoutSeconds + preStopSleepSeconds (%v), or the kubelet kills streams that are still draining" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: explicit, or drain + preStop + 10 s for the telemetry flush. */}}
{{- define "llmtap.terminationGracePeriod" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add (ceil .Values.proxy.drainTimeoutSeconds | int) .Values.preStopSleepSeconds 10 }}
{{- end }}
{{- end }}

{{/* The generated collector sidecar config: OTLP in on localhost, forward over OTLP/gRPC. */}}
{{- define "llmtap.sidecarCollectorConfig" -}}
{{- if .Values.collector.sidecar.config }}
{{- toYaml .Values.collector.sidecar.config }}
{{- else }}
extensions:
  health_check:
    endpoint: ${env:MY_POD_IP}:13133
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
      http:
        endpoint: 127.0.0.1:4318
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 25
  batch:
    timeout: 2s
exporters:
  otlp:
    endpoint: {{ .Values.collector.sidecar.forwardEndpoint | quote }}
    tls:
      insecure: {{ .Values.collector.sidecar.insecure }}
    sending_queue:
      enabled: true
      queue_size: 2000
    retry_on_failure:
      enabled: true
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
    metrics:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp]
{{- end }}
{{- end }}
