{{- define "llm-twin.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "llm-twin.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llm-twin.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "llm-twin.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}{{ default (printf "%s-operator" (include "llm-twin.fullname" .)) .Values.operator.serviceAccount.name }}{{- else -}}{{ default "default" .Values.operator.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Pods that need no Kubernetes API and no root: every pod the chart creates but the operator. */}}
{{- define "llm-twin.podSecurity" -}}
automountServiceAccountToken: false
securityContext: {runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, seccompProfile: {type: RuntimeDefault}}
{{- end -}}

{{/* Ray writes its session files under /tmp and its sockets beside them, so its root stays writable. */}}
{{- define "llm-twin.rayContainerSecurity" -}}
securityContext: {allowPrivilegeEscalation: false, privileged: false, capabilities: {drop: [ALL]}}
{{- end -}}

{{/* The platform's environment: who may call (API keys from auth.apiKeysSecret; without any key
only loopback clients are answered) and where traces go. */}}
{{- define "llm-twin.platformEnv" -}}
- {name: TWIN_API_KEYS_FILE, value: /etc/llm-twin/keys/api-keys.json}
- {name: TWIN_INSECURE_NO_AUTH, value: {{ .Values.auth.insecureNoAuth | quote }}}
{{- /* Read by Serve's proxies (services/gateway/proxy_guard.py): gRPC refuses a message over the HTTP body limit. */}}
- {name: RAY_SERVE_GRPC_MAX_MESSAGE_SIZE, value: "1048576"}
- {name: RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH, value: "services.gateway.proxy_guard:middlewares"}
{{- with include "llm-twin.trackingUri" . }}
- {name: TWIN_TRACKING_URI, value: {{ . | quote }}}
{{- end }}
{{- if .Values.tracing.enabled }}
- {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://{{ include "llm-twin.fullname" . }}-otel-collector:4318"}
- {name: RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH, value: "llm_twin.telemetry:span_processors"}
- {name: RAY_SERVE_TRACING_SAMPLING_RATIO, value: {{ .Values.tracing.samplingRatio | quote }}}
{{- end }}
{{- end -}}

{{/* The MLflow server everything logs to: the chart's own, or tracking.uri (empty: none). */}}
{{- define "llm-twin.trackingUri" -}}
{{- if .Values.tracking.server.enabled -}}http://{{ include "llm-twin.fullname" . }}-mlflow.{{ .Release.Namespace }}.svc:5000{{- else -}}{{ .Values.tracking.uri }}{{- end -}}
{{- end -}}

{{- define "llm-twin.kuberayNamespace" -}}
{{ .Values.networkPolicy.kuberayNamespace | default .Release.Namespace }}
{{- end -}}

{{- define "llm-twin.operatorRules" -}}
- apiGroups: [llmtwin.dev]
  resources: [twinmodels]
  verbs: [get, list, watch, patch, update]
- apiGroups: [llmtwin.dev]
  resources: [twinmodels/status]
  verbs: [get, patch, update]
- apiGroups: [ray.io]
  resources: [rayjobs, rayservices]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch, delete]
# Each twin's NetworkPolicies (its Ray pods and its refresh pods, in its namespace).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
# spec.refresh runs as a Job in the twin's namespace; its report is its pod's termination message.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
# Only a Secret's metadata is requested (PartialObjectMetadata), to check that a Secret a TwinModel names is
# labelled llmtwin.dev/twin-secret=true; its data reaches pods by secretKeyRef, never the operator. RBAC
# cannot grant metadata alone: set watchNamespaces to keep this right to those namespaces.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}
