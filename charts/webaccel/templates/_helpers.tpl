{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "webaccel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> unless the release name already contains the chart name.
*/}}
{{- define "webaccel.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "webaccel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of this chart. Note: app.kubernetes.io/managed-by is Helm here; the
value webaccel-operator is reserved for the objects the operator itself creates.
*/}}
{{- define "webaccel.labels" -}}
helm.sh/chart: {{ include "webaccel.chart" . }}
{{ include "webaccel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: webaccel
{{- end }}

{{/*
Selector labels of the operator pods.
*/}}
{{- define "webaccel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webaccel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "webaccel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webaccel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Operator image reference: repository@digest, else repository:tag (tag defaults to appVersion).
*/}}
{{- define "webaccel.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Namespaces that get the browser-pod NetworkPolicy.
*/}}
{{- define "webaccel.browserNamespaces" -}}
{{- if .Values.networkPolicy.browserNamespaces }}
{{- toJson .Values.networkPolicy.browserNamespaces }}
{{- else }}
{{- toJson (list (.Values.watchNamespace | default .Release.Namespace)) }}
{{- end }}
{{- end }}

{{/*
The gateway's objects: <fullname>-gateway, cut so that the name stays a DNS label.
*/}}
{{- define "webaccel.gateway.fullname" -}}
{{- printf "%s-gateway" (include "webaccel.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Selector labels of the gateway pods (networkPolicy.gatewaySelector matches them by default).
*/}}
{{- define "webaccel.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webaccel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
Labels on every gateway object.
*/}}
{{- define "webaccel.gateway.labels" -}}
helm.sh/chart: {{ include "webaccel.chart" . }}
{{ include "webaccel.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: webaccel
{{- end }}

{{/*
Name of the gateway's ServiceAccount.
*/}}
{{- define "webaccel.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "webaccel.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The ClickHouse settings the gateway uses: gateway.clickhouse when it names a URL or a
Secret, else the operator's clickhouse values.
*/}}
{{- define "webaccel.gateway.clickhouse" -}}
{{- $g := .Values.gateway.clickhouse | default dict }}
{{- $ref := $g.urlSecretRef | default dict }}
{{- if or $g.url $ref.name }}
{{- toJson $g }}
{{- else }}
{{- toJson .Values.clickhouse }}
{{- end }}
{{- end }}
