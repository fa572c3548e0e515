{{/* Names and labels shared by every template. */}}

{{- define "archipel.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "archipel.labels" -}}
app.kubernetes.io/name: archipel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "archipel.controlPlane" -}}{{ .Release.Name }}-controlplane{{- end }}
{{- define "archipel.etcd" -}}{{ .Release.Name }}-etcd{{- end }}
{{- define "archipel.agent" -}}{{ .Release.Name }}-agent{{- end }}

{{- define "archipel.adminTokenSecret" -}}
{{ .Values.controlPlane.adminTokenSecret | default (printf "%s-admin" (include "archipel.controlPlane" .)) }}
{{- end }}

{{- define "archipel.encryptionSecret" -}}
{{ .Values.controlPlane.encryption.existingSecret | default (printf "%s-encryption" (include "archipel.controlPlane" .)) }}
{{- end }}

{{/* An EncryptionConfiguration (the control plane's --encryption-provider-config) with
one AES-GCM key, .secret (base64), encrypting Secrets. */}}
{{- define "archipel.encryptionConfig" -}}
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: {{ .secret }}
      - identity: {}
{{- end }}

{{/* etcd's TLS files, for the chart's own etcd: its serving certificate, and the
control plane's client certificate (the Secret it mounts, or etcd.tls.secretName). */}}
{{- define "archipel.etcdServerSecret" -}}{{ include "archipel.etcd" . }}-server-tls{{- end }}
{{- define "archipel.etcdClientSecret" -}}
{{ .Values.etcd.tls.secretName | default (printf "%s-client-tls" (include "archipel.etcd" .)) }}
{{- end }}

{{/* Whether the control plane speaks TLS to etcd: the chart's etcd with etcd.tls.enabled,
or your own etcd named by https:// endpoints (then etcd.tls.secretName is needed). */}}
{{- define "archipel.etcdTLS" -}}
{{- if .Values.etcd.enabled }}
{{- if .Values.etcd.tls.enabled }}true{{ end }}
{{- else }}
{{- $https := 0 }}
{{- range .Values.etcd.endpoints }}{{ if hasPrefix "https://" . }}{{ $https = add1 $https }}{{ end }}{{ end }}
{{- if and $https (ne (int $https) (len .Values.etcd.endpoints)) }}
{{- fail "etcd.endpoints: all http:// or all https://: one etcd cluster serves its clients one way" }}
{{- end }}
{{- if and $https (not .Values.etcd.tls.secretName) }}
{{- fail "etcd.tls.secretName: https:// etcd endpoints need a Secret with ca.crt, tls.crt and tls.key" }}
{{- end }}
{{- if and (not $https) .Values.etcd.tls.secretName }}
{{- fail "etcd.tls.secretName: the etcd.endpoints are plaintext (http://): name them https:// to use it" }}
{{- end }}
{{- if $https }}true{{ end }}
{{- end }}
{{- end }}

{{- define "archipel.caSecret" -}}
{{ .Values.controlPlane.tls.caSecretName | default (printf "%s-ca" (include "archipel.controlPlane" .)) }}
{{- end }}

{{- define "archipel.agentSecret" -}}
{{ .Values.agent.existingSecret | default (printf "%s-credential" (include "archipel.agent" .)) }}
{{- end }}

{{- define "archipel.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
fsGroup: {{ .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "archipel.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}
