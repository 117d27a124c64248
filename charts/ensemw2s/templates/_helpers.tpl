{{/*
Chart name, truncated to the 63-character label limit.
*/}}
{{- define "ensemw2s.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full resource name. Truncated to 52 characters: the CronJob controller appends an 11-character suffix to Job
names, which must stay within 63.
*/}}
{{- define "ensemw2s.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ensemw2s.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ensemw2s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ensemw2s.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ensemw2s.labels" -}}
helm.sh/chart: {{ include "ensemw2s.chart" . }}
{{ include "ensemw2s.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ensemw2s
{{- end }}

{{- define "ensemw2s.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ensemw2s.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ensemw2s.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The ablation config file (ConfigMap key config.yaml). The checksum/config pod annotation is the sha256 of
exactly this text.
*/}}
{{- define "ensemw2s.configYaml" -}}
{{- toYaml .Values.ablations }}
{{- end }}

{{- define "ensemw2s.configPath" -}}
{{- printf "%s/config.yaml" (trimSuffix "/" .Values.configMountPath) }}
{{- end }}

{{/*
Value checks the JSON schema cannot express; rendering fails with a message naming the key.
*/}}
{{- define "ensemw2s.validate" -}}
{{- $mode := toString .Values.mode }}
{{- if not (has $mode (list "cronjob" "recurringRun")) }}
{{- fail (printf "mode: %q is not allowed; allowed values: cronjob, recurringRun" $mode) }}
{{- end }}
{{- if eq $mode "cronjob" }}
{{- $cron := trim (toString .Values.schedule.cron) }}
{{- $n := len (regexSplit "\\s+" $cron -1) }}
{{- if or (not $cron) (ne $n 5) }}
{{- fail (printf "schedule.cron: %q has %d fields; mode cronjob needs a 5-field Kubernetes CronJob schedule (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\"" $cron (ternary 0 $n (not $cron))) }}
{{- end }}
{{- else }}
{{- $cron := trim (toString .Values.schedule.kfpCron) }}
{{- $n := len (regexSplit "\\s+" $cron -1) }}
{{- if or (not $cron) (ne $n 6) }}
{{- fail (printf "schedule.kfpCron: %q has %d fields; mode recurringRun needs a 6-field KFP cron schedule (second minute hour day-of-month month day-of-week), e.g. \"0 0 2 * * *\"" $cron (ternary 0 $n (not $cron))) }}
{{- end }}
{{- end }}
{{- if not .Values.s3.existingSecret }}
{{- fail "s3.existingSecret: name the existing Secret with the S3 credentials (the chart never creates one)" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) (.Values.rbac.create) }}
{{- fail "serviceAccount.name: required when rbac.create is true and serviceAccount.create is false" }}
{{- end }}
{{- end }}

{{/*
Pod template shared by the CronJob (ensemw2s submit) and the recurring-run hook Job (ensemw2s schedule).
Call with (dict "root" $ "component" "<name>" "args" (list ...)).
*/}}
{{- define "ensemw2s.podTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "ensemw2s.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "ensemw2s.configYaml" $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ensemw2s.serviceAccountName" $root }}
  # The Kubernetes API is not used; the KFP token (if enabled) is a separate projected volume.
  automountServiceAccountToken: false
  enableServiceLinks: false
  restartPolicy: Never
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: ensemw2s
      image: {{ include "ensemw2s.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["ensemw2s"]
      args:
        {{- range .args }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: KFP_HOST
          value: {{ $v.kfp.host | quote }}
        - name: ENSEMW2S_HOME
          value: {{ $v.scratch.cacheDir | quote }}
        - name: S3_ENDPOINT_URL
          value: {{ $v.s3.endpoint | quote }}
        - name: AWS_ENDPOINT_URL_S3
          value: {{ $v.s3.endpoint | quote }}
        - name: S3_BUCKET
          value: {{ $v.s3.bucket | quote }}
        - name: AWS_DEFAULT_REGION
          value: {{ $v.s3.region | quote }}
        - name: AWS_ACCESS_KEY_ID
          valueFrom:
            secretKeyRef:
              name: {{ $v.s3.existingSecret | quote }}
              key: {{ $v.s3.accessKeyIdKey | quote }}
        - name: AWS_SECRET_ACCESS_KEY
          valueFrom:
            secretKeyRef:
              name: {{ $v.s3.existingSecret | quote }}
              key: {{ $v.s3.secretAccessKeyKey | quote }}
        {{- if $v.kfp.serviceAccountToken.enabled }}
        - name: KF_PIPELINES_SA_TOKEN_PATH
          value: /var/run/secrets/kubeflow/pipelines/token
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ $v.configMountPath | quote }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: cache
          mountPath: {{ $v.scratch.cacheDir | quote }}
        - name: config-home
          mountPath: {{ $v.scratch.configHome | quote }}
        {{- if $v.kfp.serviceAccountToken.enabled }}
        - name: kfp-token
          mountPath: /var/run/secrets/kubeflow/pipelines
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "ensemw2s.fullname" $root }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.scratch.sizeLimit }}
    - name: cache
      emptyDir:
        sizeLimit: {{ $v.scratch.sizeLimit }}
    - name: config-home
      emptyDir:
        sizeLimit: 16Mi
    {{- if $v.kfp.serviceAccountToken.enabled }}
    - name: kfp-token
      projected:
        sources:
          - serviceAccountToken:
              path: token
              audience: {{ $v.kfp.serviceAccountToken.audience | quote }}
              expirationSeconds: {{ $v.kfp.serviceAccountToken.expirationSeconds }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
