{{/*
Kafka client settings: one path for every service. In secure mode each service authenticates
with SCRAM-SHA-512 as its own KafkaUser over TLS; the password and the cluster CA come from the
Secrets Strimzi creates, mounted as files, and the IOTPIPE_KAFKA_* variables point at them.
*/}}

{{- define "iotpipe.kafkaBootstrap" -}}
{{- $k := .Values.kafka -}}
{{- printf "%s-kafka-bootstrap:%v" $k.clusterName (ternary $k.tlsPort $k.plainPort $k.security.enabled) }}
{{- end }}

{{/* KafkaUser name of a service, cut at 63 characters as it always was (a new name would make an
upgrade delete the user and its Secret); checkNames refuses names the cut makes equal. Call with
(dict "ctx" $ "user" "query"). */}}
{{- define "iotpipe.kafkaUser" -}}
{{- printf "%s-%s" (include "iotpipe.fullname" .ctx) .user | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iotpipe.kafkaCaSecret" -}}
{{- printf "%s-cluster-ca-cert" .Values.kafka.clusterName }}
{{- end }}

{{/* Env entries. Call with (dict "ctx" $ "user" "query"). */}}
{{- define "iotpipe.kafkaEnv" -}}
- name: IOTPIPE_KAFKA_BOOTSTRAP
  value: {{ include "iotpipe.kafkaBootstrap" .ctx | quote }}
{{- if .ctx.Values.kafka.security.enabled }}
- name: IOTPIPE_KAFKA_SECURITY_PROTOCOL
  value: SASL_SSL
- name: IOTPIPE_KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: IOTPIPE_KAFKA_SASL_USERNAME
  value: {{ include "iotpipe.kafkaUser" . | quote }}
- name: IOTPIPE_KAFKA_SASL_PASSWORD_FILE
  value: /etc/iotpipe/kafka/user/password
- name: IOTPIPE_KAFKA_SSL_CA_FILE
  value: /etc/iotpipe/kafka/ca/ca.crt
{{- else }}
- name: IOTPIPE_KAFKA_SECURITY_PROTOCOL
  value: PLAINTEXT
{{- end }}
{{- end }}

{{/* Volumes holding the KafkaUser password and the cluster CA (secure mode only). */}}
{{- define "iotpipe.kafkaVolumes" -}}
{{- if .ctx.Values.kafka.security.enabled -}}
- name: kafka-user
  secret:
    secretName: {{ include "iotpipe.kafkaUser" . }}
    items: [{key: password, path: password}]
- name: kafka-ca
  secret:
    secretName: {{ include "iotpipe.kafkaCaSecret" .ctx }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end }}

{{- define "iotpipe.kafkaVolumeMounts" -}}
{{- if .Values.kafka.security.enabled -}}
- {name: kafka-user, mountPath: /etc/iotpipe/kafka/user, readOnly: true}
- {name: kafka-ca, mountPath: /etc/iotpipe/kafka/ca, readOnly: true}
{{- end }}
{{- end }}
