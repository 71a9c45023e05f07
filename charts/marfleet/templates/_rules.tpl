{{/*
Rule groups of the PrometheusRule, kept apart from the object so promtool can check and unit-test
exactly what ships (tests render this and feed spec.groups to `promtool test rules`).

SLO alerts follow the multi-window, multi-burn-rate scheme: a long window proves the budget is
really burning, a short window (1/12 of it) proves it still is. Fast burns page, slow burns open a
ticket. Objectives are recorded per InferenceService so per-service overrides need no extra alerts.
*/}}

{{/* le value as the runtime's client library writes it: 0.5 -> "0.5", 1 -> "1.0". */}}
{{- define "marfleet.leLabel" -}}
{{- $v := float64 . -}}
{{- if eq $v (floor $v) }}{{ printf "%.1f" $v }}{{ else }}{{ $v }}{{ end -}}
{{- end }}

{{/* One (namespace, isvc) series per override with the given objective, joined by `or`. */}}
{{- define "marfleet.objectiveOverrides" -}}
{{- $key := .key -}}
{{- $parts := list -}}
{{- range .overrides -}}
{{- if hasKey . $key -}}
{{- $parts = append $parts (printf "label_replace(label_replace(vector(%v), \"namespace\", %q, \"\", \"\"), \"isvc\", %q, \"\", \"\")" (get . $key) .namespace .inferenceService) -}}
{{- end -}}
{{- end -}}
{{- join "\n  or " $parts -}}
{{- end }}

{{- define "marfleet.objectiveExpr" -}}
{{- $overrides := include "marfleet.objectiveOverrides" . -}}
{{- if $overrides -}}
group by (namespace, isvc) (marfleet_requests_total) * {{ .default }}
  unless on (namespace, isvc) ({{ $overrides }})
  or {{ $overrides }}
{{- else -}}
group by (namespace, isvc) (marfleet_requests_total) * {{ .default }}
{{- end -}}
{{- end }}

{{- define "marfleet.burnAlertExpr" -}}
{{- $sli := .sli -}}
{{- $objective := .objective -}}
{{- range $i, $pair := .pairs }}
{{- if $i }}
or
{{ end -}}
(
  marfleet:{{ $sli }}:ratio_rate{{ index $pair 1 }}
    > on (namespace, isvc) ({{ index $pair 0 }} * (1 - marfleet:{{ $objective }}:objective))
  and
  marfleet:{{ $sli }}:ratio_rate{{ index $pair 2 }}
    > on (namespace, isvc) ({{ index $pair 0 }} * (1 - marfleet:{{ $objective }}:objective))
)
{{- end }}
{{- end }}

{{- define "marfleet.ruleGroups" -}}
{{- $slo := .Values.monitoring.prometheusRule.slo -}}
{{- $alerts := .Values.monitoring.prometheusRule.alerts -}}
{{- $extra := .Values.monitoring.prometheusRule.additionalAlertLabels -}}
{{- $le := include "marfleet.leLabel" $slo.latency.thresholdSeconds -}}
{{- $fast := list (list 14.4 "1h" "5m") (list 6 "6h" "30m") -}}
{{- $slow := list (list 3 "1d" "2h") (list 1 "3d" "6h") -}}
- name: marfleet-slo-recording
  rules:
    - record: marfleet:slo_availability:objective
      expr: |
        {{- include "marfleet.objectiveExpr" (dict "key" "availability" "default" $slo.availability "overrides" $slo.overrides) | nindent 8 }}
    - record: marfleet:slo_latency:objective
      expr: |
        {{- include "marfleet.objectiveExpr" (dict "key" "latency" "default" $slo.latency.objective "overrides" $slo.overrides) | nindent 8 }}
    {{- range $window := list "5m" "30m" "1h" "2h" "6h" "1d" "3d" }}
    - record: marfleet:request_errors:ratio_rate{{ $window }}
      expr: |
        (
          sum by (namespace, isvc) (rate(marfleet_requests_total{code=~"5.."}[{{ $window }}]))
          or sum by (namespace, isvc) (rate(marfleet_requests_total[{{ $window }}])) * 0
        )
        / sum by (namespace, isvc) (rate(marfleet_requests_total[{{ $window }}]))
    - record: marfleet:request_slow:ratio_rate{{ $window }}
      expr: |
        1 - (
          sum by (namespace, isvc) (rate(marfleet_request_duration_seconds_bucket{le="{{ $le }}"}[{{ $window }}]))
          / sum by (namespace, isvc) (rate(marfleet_request_duration_seconds_count[{{ $window }}]))
        )
    {{- end }}
- name: marfleet-runtime-recording
  rules:
    - record: marfleet:model_load_failures:increase{{ $alerts.modelLoadFailureWindow }}
      expr: |
        sum by (namespace, isvc, pod, model) (
          (marfleet_model_load_failures_total unless marfleet_model_load_failures_total offset {{ $alerts.modelLoadFailureWindow }})
          or increase(marfleet_model_load_failures_total[{{ $alerts.modelLoadFailureWindow }}])
        )
    - record: marfleet:worker_crashes:increase15m
      expr: |
        sum by (namespace, isvc, pod, model) (
          (marfleet_worker_restarts_total{reason="crash"} unless marfleet_worker_restarts_total{reason="crash"} offset 15m)
          or increase(marfleet_worker_restarts_total{reason="crash"}[15m])
        )
- name: marfleet-slo-alerts
  rules:
    {{- range $sli := list (dict "name" "Availability" "sli" "request_errors" "objective" "slo_availability" "what" "requests failing with 5xx") (dict "name" "Latency" "sli" "request_slow" "objective" "slo_latency" "what" (printf "requests slower than %vs" $slo.latency.thresholdSeconds)) }}
    {{- range $speed := list (dict "name" "Fast" "pairs" $fast "severity" "page" "for" "2m" "pace" "fast" "spent" "5 days") (dict "name" "Slow" "pairs" $slow "severity" "ticket" "for" "15m" "pace" "steadily" "spent" "30 days") }}
    - alert: Marfleet{{ $sli.name }}BudgetBurn{{ $speed.name }}
      expr: |
        {{- include "marfleet.burnAlertExpr" (dict "sli" $sli.sli "objective" $sli.objective "pairs" $speed.pairs) | nindent 8 }}
      for: {{ $speed.for }}
      labels:
        severity: {{ $speed.severity }}
        slo: {{ lower $sli.name }}
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: {{ printf "%s/%s burns its %s error budget %s" "{{ $labels.namespace }}" "{{ $labels.isvc }}" (lower $sli.name) $speed.pace | quote }}
        description: {{ printf "At this rate of %s, %s/%s spends its 30-day %s error budget in less than %s." $sli.what "{{ $labels.namespace }}" "{{ $labels.isvc }}" (lower $sli.name) $speed.spent | quote }}
    {{- end }}
    {{- end }}
- name: marfleet-runtime-alerts
  rules:
    - alert: MarfleetModelLoadFailing
      expr: marfleet:model_load_failures:increase{{ $alerts.modelLoadFailureWindow }} > 0
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: {{ "Model {{ $labels.model }} fails to load on {{ $labels.namespace }}/{{ $labels.pod }}" | quote }}
        description: {{ printf "Loading failed at least once in the last %s. Read the pod's logs and check the model archive (handler import errors, missing files, out of memory)." $alerts.modelLoadFailureWindow | quote }}
    - alert: MarfleetWorkersCrashLooping
      expr: marfleet:worker_crashes:increase15m >= {{ $alerts.workerCrashesPer15m }}
      labels:
        severity: critical
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: {{ "Workers of {{ $labels.model }} keep crashing on {{ $labels.namespace }}/{{ $labels.pod }}" | quote }}
        description: {{ printf "At least %v worker crashes in 15 minutes: the handler or the device is failing. Read the worker logs and check GPU health." $alerts.workerCrashesPer15m | quote }}
    - alert: MarfleetQueueFull
      expr: sum by (namespace, isvc, pod, model) (rate(marfleet_queue_rejections_total[5m])) > 0
      for: {{ $alerts.queueFullFor }}
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: {{ "The queue of {{ $labels.model }} on {{ $labels.namespace }}/{{ $labels.pod }} stays full" | quote }}
        description: {{ printf "Requests have been refused with 503 for %s because the queue is full. Add replicas (raise maxReplicas) or workers, or find out why requests got slower." $alerts.queueFullFor | quote }}
    - alert: MarfleetOperatorReconcileErrors
      expr: sum by (namespace, pod) (rate(marfleet_operator_reconciles_total{result="error"}[5m])) > 0
      for: {{ $alerts.reconcileErrorsFor }}
      labels:
        severity: warning
        {{- with $extra }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        summary: {{ "The marfleet operator {{ $labels.namespace }}/{{ $labels.pod }} keeps failing to reconcile" | quote }}
        description: {{ printf "Reconciles have been failing for %s. Read the operator's logs and the InferenceServices' events." $alerts.reconcileErrorsFor | quote }}
{{- end }}
