{{/* Chart name, truncated to the 63 characters a label value may have. */}}
{{- define "iotpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, or release-chart when it lacks the chart name. */}}
{{- define "iotpipe.fullname" -}}
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

{{- define "iotpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. Call with (dict "ctx" $ "component" "query"). */}}
{{- define "iotpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iotpipe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels. Call with (dict "ctx" $ "component" "query"). */}}
{{- define "iotpipe.labels" -}}
helm.sh/chart: {{ include "iotpipe.chart" .ctx }}
{{ include "iotpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: iotpipe
{{- end }}

{{/* Image reference. Call with (dict "ctx" $ "image" "sensors"). */}}
{{- define "iotpipe.image" -}}
{{- $img := index .ctx.Values.images .image -}}
{{- printf "%s:%s" $img.repository $img.tag }}
{{- end }}

{{/* Topic of a sensor type. Call with (dict "ctx" $ "sensor" "temperature"). */}}
{{- define "iotpipe.topic" -}}
{{- printf "%s%s" .ctx.Values.common.topicPrefix .sensor }}
{{- end }}

{{/* Compacted topic of per-bucket aggregates (Settings.rollup_topic). */}}
{{- define "iotpipe.rollupTopic" -}}
{{- printf "%srollups" .Values.common.topicPrefix }}
{{- end }}

{{/* Comma list of every sensor type. */}}
{{- define "iotpipe.sensorTypes" -}}
{{- $types := list }}
{{- range .Values.sensors }}{{ $types = append $types .type }}{{ end }}
{{- join "," $types }}
{{- end }}

{{/* Settings every service shares, as container env entries. */}}
{{- define "iotpipe.commonEnv" -}}
- name: IOTPIPE_TOPIC_PREFIX
  value: {{ .Values.common.topicPrefix | quote }}
- name: IOTPIPE_LOG_FORMAT
  value: {{ .Values.common.logFormat | quote }}
- name: IOTPIPE_LOG_LEVEL
  value: {{ .Values.common.logLevel | quote }}
- name: IOTPIPE_ALLOWED_LATENESS_SECONDS
  value: {{ .Values.common.allowedLatenessSeconds | quote }}
{{- end }}

{{/* Rollup settings: the stream that writes the buckets and the query service that reads them
must agree on their length, so both take them from here. */}}
{{- define "iotpipe.rollupEnv" -}}
- name: IOTPIPE_ROLLUP_SECONDS
  value: {{ .Values.rollups.bucketSeconds | quote }}
- name: IOTPIPE_ROLLUP_RETENTION_MS
  value: {{ .Values.rollups.retentionMs | int64 | quote }}
{{- end }}

{{/* restricted Pod Security: pod level. Call with the UID. */}}
{{- define "iotpipe.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* restricted Pod Security: container level (read-only root; /tmp is an emptyDir). */}}
{{- define "iotpipe.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* restricted Pod Security for pods whose images pick their own UID (Strimzi). */}}
{{- define "iotpipe.nonRootPodSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Who may connect to the Kafka client listener (Strimzi makes its NetworkPolicy from this;
without it, every pod of the cluster may): this release's pods, and kafka.clientPeers. */}}
{{- define "iotpipe.kafkaClientPeers" -}}
networkPolicyPeers:
  - podSelector:
      matchLabels:
        app.kubernetes.io/name: {{ include "iotpipe.name" . }}
        app.kubernetes.io/instance: {{ .Release.Name }}
  {{- with .Values.kafka.clientPeers }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Fails the install when a name Kubernetes holds to 63 characters (a Service's, a label
value's) would pass them: the query Service and the stream's metrics Service (the Spark
Operator's `<app>-ui-svc` Service and `app-name` label are shorter); and when the cut at 63 characters of the KafkaTopics'
and KafkaUsers' names (kept as it always was) would make two of them one. */}}
{{- define "iotpipe.checkNames" -}}
{{- $full := include "iotpipe.fullname" . }}
{{- $suffixes := list "query" }}
{{- if .Values.stream.enabled }}{{ $suffixes = append $suffixes "stream-metrics" }}{{ end }}
{{- range $suffixes }}
{{- $name := printf "%s-%s" $full . }}
{{- if gt (len $name) 63 }}
{{- fail (printf "the name %s has more than the 63 characters Kubernetes allows a Service: choose a shorter release name or fullnameOverride" $name) }}
{{- end }}
{{- end }}
{{- $topics := list (include "iotpipe.rollupTopic" .) }}
{{- $users := keys .Values.kafka.security.groups }}
{{- range .Values.sensors }}
{{- $topics = append $topics (include "iotpipe.topic" (dict "ctx" $ "sensor" .type)) }}
{{- $users = append $users (printf "sensor-%s" .type) }}
{{- end }}
{{- $seen := dict }}
{{- range $topics }}
{{- include "iotpipe.checkUnique" (dict "seen" $seen "name" (include "iotpipe.kafkaTopicName" .) "of" (printf "topic %s" .) "kind" "KafkaTopic" "fix" "common.topicPrefix") }}
{{- end }}
{{- if .Values.kafka.security.enabled }}
{{- $seen = dict }}
{{- range $users }}
{{- include "iotpipe.checkUnique" (dict "seen" $seen "name" (include "iotpipe.kafkaUser" (dict "ctx" $ "user" .)) "of" (printf "user %s" .) "kind" "KafkaUser" "fix" "release name, fullnameOverride, nameOverride or sensor types") }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails when two resources of one kind would get one name (names are cut at 63 characters).
Call with (dict "seen" $dict "name" .. "of" .. "kind" .. "fix" ..). */}}
{{- define "iotpipe.checkUnique" -}}
{{- if hasKey .seen .name }}
{{- if eq (get .seen .name) .of }}
{{- fail (printf "the %s is listed twice: give each sensor its own type" .of) }}
{{- end }}
{{- fail (printf "the %s and the %s would be one %s, %s: choose a shorter %s" (get .seen .name) .of .kind .name .fix) }}
{{- end }}
{{- $_ := set .seen .name .of }}
{{- end }}
