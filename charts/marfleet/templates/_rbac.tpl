{{/*
What the operator does, as RBAC rules (read from marfleet.operator: the kinds it watches and
applies, status by server-side apply, Events, its leader Lease); nothing else is granted.
workloadRules: in every watched namespace (or cluster-wide when all are watched).
*/}}
{{- define "marfleet.workloadRules" -}}
- apiGroups: [serving.marfleet.io]
  resources: [inferenceservices]
  verbs: [get, list, watch]
- apiGroups: [serving.marfleet.io]
  resources: [inferenceservices/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion; clusters that enforce owner-reference
# permissions (OwnerReferencesPermissionEnforcement) ask for this.
- apiGroups: [serving.marfleet.io]
  resources: [inferenceservices/finalizers]
  verbs: [update]
# serviceaccounts, roles and rolebindings: each router gets its own identity that may only read
# its InferenceService (the operator holds that right, so granting it is no escalation).
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
{{- if include "marfleet.addonRule" (list . "keda.sh/v1alpha1/ScaledObject") }}
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}
{{- if include "marfleet.addonRule" (list . "monitoring.coreos.com/v1/ServiceMonitor") }}
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if (.Values.tenancy | default dict).secrets }}
# Whether a model.storage Secret exists (asked as metadata only), so a missing one is a status
# condition rather than pods that cannot start; only when the admin allows such Secrets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- end }}

{{/* clusterRules: the operator notices KEDA or the Prometheus Operator being installed. */}}
{{- define "marfleet.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}

{{/*
electionRules: in the release namespace only, the one Lease the replicas elect the acting one
with (operator-lease.yaml makes it, so no `create`).
*/}}
{{- define "marfleet.electionRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "marfleet.leaseName" . }}]
  verbs: [get, update]
{{- end }}

{{/* addonRule (list $ "group/version/Kind"): non-empty when rbac.addonRules grants rights on it. */}}
{{- define "marfleet.addonRule" -}}
{{- $root := index . 0 }}
{{- $mode := $root.Values.rbac.addonRules | default "auto" }}
{{- if or (eq $mode "always") (and (eq $mode "auto") ($root.Capabilities.APIVersions.Has (index . 1))) }}yes{{ end }}
{{- end }}
