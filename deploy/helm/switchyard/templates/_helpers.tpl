{{/* Names, labels and checks shared by both modes. */}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.fullname" -}}
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

{{/* The component: gateway or injector (validated). */}}
{{- define "switchyard.component" -}}
{{- if not (has .Values.mode (list "gateway" "injector")) }}
{{- fail (printf "mode must be gateway or injector, not %q" .Values.mode) }}
{{- end }}
{{- .Values.mode }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "switchyard.component" . }}
{{- end }}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Pod spec fields both modes share. */}}
{{- define "switchyard.podCommon" -}}
serviceAccountName: {{ include "switchyard.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The gateway's Switchyard config file, as the ConfigMap holds it. */}}
{{- define "switchyard.gatewayConfig" -}}
{{- $text := .Values.gateway.config }}
{{- if not (kindIs "string" $text) }}
{{- fail "gateway.config must be the config file's text (a YAML block scalar: `config: |`)" }}
{{- end }}
{{- $parsed := fromYaml $text }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "gateway.config is not valid YAML: %s" (get $parsed "Error")) }}
{{- end }}
{{- $text }}
{{- end }}

{{/*
Whole seconds Switchyard may drain after SIGTERM: gateway.config's
lifecycle.drain_timeout (rounded up), 20 s (its default) when unset or when
the config lives in an existing ConfigMap the chart cannot read.
*/}}
{{- define "switchyard.drainSeconds" -}}
{{- $secs := 20 }}
{{- if not .Values.gateway.existingConfigMap }}
{{- $lc := get (fromYaml (include "switchyard.gatewayConfig" .)) "lifecycle" }}
{{- if and (kindIs "map" $lc) (hasKey $lc "drain_timeout") }}
{{- $text := trim (toString (get $lc "drain_timeout")) }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $text }}
{{- $unit := trim (trimPrefix $num $text) }}
{{- $scale := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 }}
{{- if or (not $num) (not (hasKey $scale $unit)) }}
{{- fail (printf "gateway.config: lifecycle.drain_timeout `%s` is not a duration (use us, ms, s, m or h)" $text) }}
{{- end }}
{{- $secs = int (ceil (mulf (float64 $num) (get $scale $unit))) }}
{{- end }}
{{- end }}
{{- $secs }}
{{- end }}

{{- define "switchyard.gatewayConfigMapName" -}}
{{- default (printf "%s-config" (include "switchyard.fullname" .)) .Values.gateway.existingConfigMap }}
{{- end }}

{{/* Names of the injector's Service and TLS Secret. */}}
{{- define "switchyard.injectorServiceName" -}}
{{- include "switchyard.fullname" . }}
{{- end }}
{{- define "switchyard.injectorTLSSecret" -}}
{{- printf "%s-tls" (include "switchyard.fullname" .) }}
{{- end }}

{{/*
The injector's self-signed TLS material as YAML {caCrt, crt, key} (base64).
Generated once per render and memoised in .Values, so the Secret, the
webhook's caBundle and the Deployment's checksum agree whatever order the
templates render in. An existing Secret is reused (lookup answers nothing
under `helm template`, which then generates a fresh pair).
*/}}
{{- define "switchyard.injectorSelfSignedTLS" -}}
{{- $tls := .Values.injector.tls }}
{{- if not (hasKey $tls "_generated") }}
{{- $svc := include "switchyard.injectorServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- $existing := lookup "v1" "Secret" $ns (include "switchyard.injectorTLSSecret" .) }}
{{- $out := dict }}
{{- if and $existing $existing.data (hasKey $existing.data "ca.crt") (hasKey $existing.data "tls.crt") (hasKey $existing.data "tls.key") }}
{{- $out = dict "caCrt" (index $existing.data "ca.crt") "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") }}
{{- else }}
{{- $ca := genCA (printf "%s-ca" $svc) (int $tls.validityDays) }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $dns (int $tls.validityDays) $ca }}
{{- $out = dict "caCrt" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set $tls "_generated" $out }}
{{- end }}
{{- toYaml $tls._generated }}
{{- end }}
