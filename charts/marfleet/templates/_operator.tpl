{{/* The operator's settings, passed as environment variables (names read by marfleet.operator). */}}
{{- define "marfleet.operatorEnv" -}}
- name: MARFLEET_OPERATOR_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: MARFLEET_OPERATOR_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: MARFLEET_LEASE_NAME
  value: {{ include "marfleet.leaseName" . | quote }}
- name: MARFLEET_WATCH_NAMESPACES
  value: {{ join "," .Values.operator.watchNamespaces | quote }}
- name: MARFLEET_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: MARFLEET_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: MARFLEET_RUNTIME_IMAGE
  value: {{ include "marfleet.image" (dict "image" .Values.runtime.image "default" .Chart.AppVersion) | quote }}
- name: MARFLEET_RUNTIME_CUDA_IMAGE
  value: {{ include "marfleet.image" (dict "image" .Values.runtime.cudaImage "default" (printf "%s-cuda" .Chart.AppVersion)) | quote }}
- name: MARFLEET_ROUTER_IMAGE
  value: {{ include "marfleet.image" (dict "image" .Values.router.image "default" .Chart.AppVersion) | quote }}
- name: MARFLEET_KEDA_PROMETHEUS_ADDRESS
  value: {{ .Values.autoscaling.keda.prometheusAddress | quote }}
- name: MARFLEET_KEDA_AUTHENTICATION_REF
  value: {{ .Values.autoscaling.keda.authenticationRef | quote }}
- name: MARFLEET_TENANCY
  value: {{ toJson (.Values.tenancy | default dict) | quote }}
- name: MARFLEET_ROLLOUT_PROMETHEUS_URL
  value: {{ .Values.rollout.prometheusUrl | quote }}
- name: MARFLEET_ROUTER_METRICS_URL
  value: {{ .Values.rollout.routerMetricsUrl | quote }}
- name: MARFLEET_ROLLOUT_INTERVAL
  value: {{ .Values.rollout.intervalSeconds | quote }}
{{- /* One scrape path per pod: the chart's PodMonitors, or else the operator's ServiceMonitors. */}}
- name: MARFLEET_SERVICE_MONITORS
  value: {{ not .Values.monitoring.podMonitors.enabled | quote }}
- name: MARFLEET_MODEL_CACHE
  value: {{ toJson (.Values.modelCache | default dict) | quote }}
{{- end }}

{{- define "marfleet.leaseName" -}}
{{ include "marfleet.fullname" . }}-operator
{{- end }}

{{/* Labels the operator puts on the ServiceMonitors it creates, so the same Prometheus picks them. */}}
{{- define "marfleet.operatorArgs" -}}
- operator
{{- range $key, $value := .Values.monitoring.labels }}
- {{ printf "--service-monitor-label=%s=%s" $key $value | quote }}
{{- end }}
{{- end }}
