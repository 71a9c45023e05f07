{{/*
Pod labels the operator puts on the pods it creates (marfleet.operator.labels), and the
relabeling that turns them into the `isvc` label every rule and dashboard groups by.
*/}}
{{- define "marfleet.podMonitorRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_serving_marfleet_io_inferenceservice]
  targetLabel: isvc
{{- end }}

{{- define "marfleet.podMonitor" -}}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ include "marfleet.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "marfleet.monitoringLabels" .root | nindent 4 }}
spec:
  jobLabel: app.kubernetes.io/component
  namespaceSelector:
    {{- if .root.Values.operator.watchNamespaces }}
    matchNames:
      {{- toYaml .root.Values.operator.watchNamespaces | nindent 6 }}
    {{- else }}
    any: true
    {{- end }}
  selector:
    matchLabels:
      app.kubernetes.io/managed-by: marfleet-operator
      app.kubernetes.io/component: {{ .component }}
  podMetricsEndpoints:
    - port: metrics
      path: /metrics
      interval: {{ .root.Values.monitoring.interval }}
      {{- if eq .component "runtime" }}
      relabelings:
        {{- include "marfleet.podMonitorRelabelings" .root | nindent 8 }}
      {{- else }}
      # The router labels its series with isvc and namespace itself.
      honorLabels: true
      {{- end }}
{{- end }}
