{{/* Names: <fullname>-<component>; <fullname> is fullnameOverride or the release name. */}}
{{- define "sip.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "sip.name" -}}
{{- printf "%s-%s" (include "sip.fullname" .root) .component -}}
{{- end -}}

{{- define "sip.selector" -}}
app.kubernetes.io/name: {{ include "sip.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "sip.labels" -}}
{{ include "sip.selector" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: streaming-inference-pipeline
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "sip.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sip.sasl" -}}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "sip.tls" -}}
{{- if and (or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL")) .Values.kafka.caSecret.name }}true{{ end -}}
{{- end -}}

{{/* A process's Kafka identity: its user and password file (SASL), the brokers' CA (TLS). */}}
{{- define "sip.kafkaEnv" -}}
{{- if include "sip.sasl" .root }}
- name: PIPELINE_KAFKA__USERNAME
  value: {{ printf "%s%s" .root.Values.kafka.userPrefix .user | quote }}
- name: PIPELINE_KAFKA__PASSWORD_FILE
  value: /etc/pipeline/kafka/password
{{- end }}
{{- if include "sip.tls" .root }}
- name: PIPELINE_KAFKA__SSL_CA_FILE
  value: /etc/pipeline/kafka-ca/ca.crt
{{- end }}
{{- end -}}

{{- define "sip.kafkaMounts" -}}
{{- if include "sip.sasl" .root }}
- name: kafka-password
  mountPath: /etc/pipeline/kafka
  readOnly: true
{{- end }}
{{- if include "sip.tls" .root }}
- name: kafka-ca
  mountPath: /etc/pipeline/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sip.kafkaVolumes" -}}
{{- if include "sip.sasl" .root }}
- name: kafka-password
  secret:
    secretName: {{ printf "%s%s" .root.Values.kafka.userPrefix .user }}
    items:
      - key: password
        path: password
{{- end }}
{{- if include "sip.tls" .root }}
- name: kafka-ca
  secret:
    secretName: {{ .root.Values.kafka.caSecret.name }}
    items:
      - key: {{ .root.Values.kafka.caSecret.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* What every pipeline container shares: the image, the ConfigMap, the security context. */}}
{{- define "sip.container" -}}
image: {{ include "sip.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
envFrom:
  - configMapRef:
      name: {{ include "sip.fullname" .root }}-config
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
{{- end -}}

{{- define "sip.podSpec" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* PIPELINE_* variables from a map, in order. */}}
{{- define "sip.env" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "sip.tritonGrpc" -}}
{{- if .Values.triton.enabled -}}
{{ include "sip.fullname" . }}-triton:8001
{{- else -}}
{{ required "triton.external.grpcUrl when triton.enabled is false" .Values.triton.external.grpcUrl }}
{{- end -}}
{{- end -}}

{{- define "sip.tritonHttp" -}}
{{- if .Values.triton.enabled -}}
{{ include "sip.fullname" . }}-triton:8000
{{- else -}}
{{ required "triton.external.httpUrl when triton.enabled is false" .Values.triton.external.httpUrl }}
{{- end -}}
{{- end -}}

{{- define "sip.tritonMetrics" -}}
{{- if .Values.triton.enabled -}}
http://{{ include "sip.fullname" . }}-triton:8002/metrics
{{- else -}}
{{ .Values.triton.external.metricsUrl }}
{{- end -}}
{{- end -}}

{{/* The shared volumes: the model repository and the Feast repository (with Redis as its store). */}}
{{- define "sip.sharedMounts" -}}
- name: models
  mountPath: /var/lib/pipeline/models
- name: features
  mountPath: /var/lib/pipeline/feature_repo
- name: feature-store
  mountPath: /var/lib/pipeline/feature_repo/feature_store.yaml
  subPath: feature_store.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "sip.sharedVolumes" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "sip.fullname" . }}-models
- name: features
  persistentVolumeClaim:
    claimName: {{ include "sip.fullname" . }}-features
- name: feature-store
  configMap:
    name: {{ include "sip.fullname" . }}-feast
- name: tmp
  emptyDir: {}
{{- end -}}
