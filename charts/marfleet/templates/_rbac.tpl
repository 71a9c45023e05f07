{{/*
What the operator does, as RBAC rules; nothing outside this list is granted.
workloadRules: in every watched namespace (or cluster-wide when all are watched).
*/}}
{{- define "marfleet.workloadRules" -}}
- apiGroups: [serving.marfleet.io]
  resources: [inferenceservices]
  verbs: [get, list, watch, patch, update]
- apiGroups: [serving.marfleet.io]
  resources: [inferenceservices/status]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* clusterRules: cluster-scoped reads the operator needs wherever it watches. */}}
{{- define "marfleet.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}

{{/* electionRules: in the release namespace only, to elect the one acting replica. */}}
{{- define "marfleet.electionRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "marfleet.fullname" . }}-operator]
  verbs: [get, watch, update, patch]
{{- end }}
