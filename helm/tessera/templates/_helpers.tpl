{{/* Chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every resource: release-chart, or the release alone when it
already contains the chart name. */}}
{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's resources: (dict "ctx" $ "component" "engine"). */}}
{{- define "tessera.componentName" -}}
{{- printf "%s-%s" (include "tessera.fullname" .ctx | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{/* Labels of every resource of a component. */}}
{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tessera
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "tessera.selectorLabels" . }}
{{- end -}}

{{/* Labels that select a component's pods. */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image of a component: the gateway takes its slim image, engines on GPUs the GPU image. */}}
{{- define "tessera.image" -}}
{{- $img := .ctx.Values.image -}}
{{- if eq .component "gateway" -}}
{{- printf "%s:%s" $img.gateway.repository (default .ctx.Chart.AppVersion $img.gateway.tag) -}}
{{- else -}}
{{- $tag := default (printf "%s-cpu" .ctx.Chart.AppVersion) $img.tag -}}
{{- if and (eq .component "engine") .ctx.Values.engine.gpu.enabled -}}
{{- $tag = default (printf "%s-gpu" .ctx.Chart.AppVersion) $img.gpuTag -}}
{{- end -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "tessera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tessera.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The chart's Secret (API keys file, Redis URL). */}}
{{- define "tessera.secretName" -}}
{{- printf "%s-secrets" (include "tessera.fullname" .) -}}
{{- end -}}

{{/* Redis URL the gateway and RAG use. */}}
{{- define "tessera.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s:6379/0" (include "tessera.componentName" (dict "ctx" . "component" "redis")) -}}
{{- else -}}
{{- required "redis.externalUrl is required when redis.enabled is false" .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Whether the gateway gets a keys file. */}}
{{- define "tessera.hasKeys" -}}
{{- if or .Values.gateway.auth.keys .Values.gateway.auth.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Volumes every Tessera container writes to under a read-only root file system. */}}
{{- define "tessera.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
{{- end -}}

{{- define "tessera.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/tessera/.cache
{{- end -}}

{{/* Common pod spec fields. */}}
{{- define "tessera.podCommon" -}}
serviceAccountName: {{ include "tessera.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
