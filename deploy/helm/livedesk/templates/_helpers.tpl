{{/*
Names and labels. Templates that take a "component context" expect
  (dict "root" $ "component" "chat" "svc" .Values.chat)
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "livedesk.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or the release name alone when
it already contains the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "livedesk.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "livedesk.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: only labels that never change for the life of a release.
Selectors are immutable, so no version, chart or free-form labels here.
*/}}
{{- define "livedesk.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livedesk.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "livedesk.labels" -}}
helm.sh/chart: {{ include "livedesk.chart" . }}
{{ include "livedesk.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: livedesk
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Object name of a component: "<fullname>-<component>". */}}
{{- define "livedesk.componentName" -}}
{{- printf "%s-%s" (include "livedesk.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component. */}}
{{- define "livedesk.componentSelectorLabels" -}}
{{ include "livedesk.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a component's objects. */}}
{{- define "livedesk.componentLabels" -}}
{{ include "livedesk.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of a component's ServiceAccount. */}}
{{- define "livedesk.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create }}
{{- include "livedesk.componentName" . }}
{{- else -}}
default
{{- end }}
{{- end }}

{{/* Name of the Secret the chart creates for a component (from <svc>.secretEnv). */}}
{{- define "livedesk.secretName" -}}
{{- include "livedesk.componentName" . }}
{{- end }}

{{/* Name of the shared ConfigMap. */}}
{{- define "livedesk.configMapName" -}}
{{- printf "%s-config" (include "livedesk.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Image reference of a component: [registry/]repository:tag. */}}
{{- define "livedesk.image" -}}
{{- $registry := .root.Values.image.registry }}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- if $registry }}
{{- printf "%s/%s:%s" $registry .svc.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .svc.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Fail early on values that would run embedded chDB on more than one pod (the
schema says the same; this also holds with --skip-schema-validation).
*/}}
{{- define "livedesk.validateAnalytics" -}}
{{- $a := .Values.analytics }}
{{- if and $a.enabled $a.embeddedChdb }}
{{- if or $a.autoscaling.enabled (ne (int $a.replicaCount) 1) }}
{{- fail "analytics.embeddedChdb=true runs chDB in-process on a ReadWriteOnce volume: set analytics.replicaCount=1 and analytics.autoscaling.enabled=false, or provide CLICKHOUSE_URL and set analytics.embeddedChdb=false" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Fail early on an archive volume that the chat pods and the archive job could
not all mount at once, or on a claim named beside an S3 archive, which would
go unused (the schema says the same; this also holds with
--skip-schema-validation). An existing claim is the operator's to choose.
*/}}
{{- define "livedesk.validateArchive" -}}
{{- $c := .Values.chat }}
{{- if and $c.enabled $c.archive.enabled $c.archive.s3.url $c.archive.persistence.existingClaim }}
{{- fail "chat.archive.s3.url and chat.archive.persistence.existingClaim exclude each other: an S3 archive needs no volume (empty one of them)" }}
{{- end }}
{{- if and $c.enabled $c.archive.enabled (not $c.archive.s3.url) (not $c.archive.persistence.existingClaim) }}
{{- if not (has "ReadWriteMany" $c.archive.persistence.accessModes) }}
{{- fail "chat.archive.persistence.accessModes must include ReadWriteMany: every chat pod and the archive job mount the archive volume at once (use a StorageClass that offers it, or name a claim in chat.archive.persistence.existingClaim)" }}
{{- end }}
{{- end }}
{{- end }}
