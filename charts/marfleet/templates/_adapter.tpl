{{/*
prometheus-adapter rules serving the Pods metrics the operator's HPAs ask for
(docs/metrics.md, "Autoscaling metric names"). The adapter substitutes <<.Series>>,
<<.LabelMatchers>> (namespace and pod) and <<.GroupBy>> (namespace, pod).
*/}}
{{- define "marfleet.adapterRules" -}}
rules:
  - seriesQuery: 'marfleet_requests_total{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
    name:
      matches: ^marfleet_requests_total$
      as: marfleet_requests_per_second
    metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)
  - seriesQuery: 'marfleet_inflight_requests{namespace!="",pod!=""}'
    resources:
      overrides:
        namespace: {resource: namespace}
        pod: {resource: pod}
    name:
      matches: ^marfleet_inflight_requests$
      as: marfleet_inflight_requests
    metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
{{- end }}
