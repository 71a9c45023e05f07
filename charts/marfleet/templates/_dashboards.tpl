{{/*
Grafana dashboard JSON built from the compact specs in dashboards/*.yaml, so the queries live
in one readable place and every panel gets the same datasource, variables and layout rules.
*/}}

{{- define "marfleet.dashboardVariable" -}}
{{- $queries := dict
  "namespace" "label_values(marfleet_requests_total, namespace)"
  "isvc" "label_values(marfleet_requests_total{namespace=~\"$namespace\"}, isvc)"
  "model" "label_values(marfleet_requests_total{namespace=~\"$namespace\", isvc=~\"$isvc\"}, model)" -}}
{{- $labels := dict "namespace" "Namespace" "isvc" "InferenceService" "model" "Model" -}}
{{- $query := required (printf "dashboard variable %q is not one of namespace, isvc, model" .) (get $queries .) -}}
{{- toJson (dict
  "name" .
  "label" (get $labels .)
  "type" "query"
  "datasource" (dict "type" "prometheus" "uid" "${datasource}")
  "query" (dict "query" $query "refId" (printf "%s-values" .))
  "definition" $query
  "refresh" 2
  "multi" true
  "includeAll" true
  "allValue" ".*"
  "current" (dict "text" "All" "value" "$__all")
  "sort" 1) -}}
{{- end }}

{{- define "marfleet.dashboardPanel" -}}
{{- $p := .panel -}}
{{- $targets := list -}}
{{- range $i, $t := $p.targets -}}
{{- $target := dict "refId" (substr $i (add1 $i | int) "ABCDEFGHIJ") "expr" (trim $t.expr) "datasource" (dict "type" "prometheus" "uid" "${datasource}") -}}
{{- with $t.legend }}{{ $_ := set $target "legendFormat" . }}{{ end -}}
{{- if $t.instant }}{{ $_ := set $target "instant" true }}{{ $_ := set $target "range" false }}{{ end -}}
{{- with $t.format }}{{ $_ := set $target "format" . }}{{ end -}}
{{- $targets = append $targets $target -}}
{{- end -}}
{{- $defaults := dict "unit" (default "none" $p.unit) -}}
{{- if hasKey $p "min" }}{{ $_ := set $defaults "min" $p.min }}{{ end -}}
{{- if hasKey $p "max" }}{{ $_ := set $defaults "max" $p.max }}{{ end -}}
{{- if hasKey $p "decimals" }}{{ $_ := set $defaults "decimals" $p.decimals }}{{ end -}}
{{- $panel := dict
  "id" .id
  "type" $p.type
  "title" $p.title
  "datasource" (dict "type" "prometheus" "uid" "${datasource}")
  "gridPos" .gridPos
  "fieldConfig" (dict "defaults" $defaults "overrides" list)
  "options" (dict "legend" (dict "displayMode" "list" "placement" "bottom" "showLegend" true))
  "targets" $targets -}}
{{- with $p.description }}{{ $_ := set $panel "description" . }}{{ end -}}
{{- toJson $panel -}}
{{- end }}

{{- define "marfleet.dashboard" -}}
{{- $spec := . -}}
{{- $panels := list -}}
{{- $x := 0 -}}
{{- $y := 0 -}}
{{- $rowHeight := 0 -}}
{{- range $i, $p := $spec.panels -}}
{{- $w := int (default 12 $p.width) -}}
{{- $h := int (default 8 $p.height) -}}
{{- if gt (add $x $w) 24 }}{{ $x = 0 }}{{ $y = add $y $rowHeight }}{{ $rowHeight = 0 }}{{ end -}}
{{- $grid := dict "x" $x "y" $y "w" $w "h" $h -}}
{{- $panels = append $panels (include "marfleet.dashboardPanel" (dict "panel" $p "id" (add1 $i) "gridPos" $grid) | fromJson) -}}
{{- $x = add $x $w -}}
{{- $rowHeight = max $rowHeight $h -}}
{{- end -}}
{{- $variables := list (dict
  "name" "datasource"
  "label" "Data source"
  "type" "datasource"
  "query" "prometheus"
  "current" (dict)
  "hide" 0) -}}
{{- range $spec.variables -}}
{{- $variables = append $variables (include "marfleet.dashboardVariable" . | fromJson) -}}
{{- end -}}
{{- toPrettyJson (dict
  "uid" $spec.uid
  "title" $spec.title
  "description" $spec.description
  "tags" (list "marfleet")
  "editable" true
  "schemaVersion" 39
  "graphTooltip" 1
  "time" (dict "from" "now-6h" "to" "now")
  "refresh" "30s"
  "timezone" "browser"
  "templating" (dict "list" $variables)
  "panels" $panels) -}}
{{- end }}
