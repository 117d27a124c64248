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
The ablation config file (ConfigMap key config.yaml): the `ablations` string, verbatim. The checksum/config pod
annotation is the sha256 of exactly this text.
*/}}
{{- define "ensemw2s.configYaml" -}}
{{- .Values.ablations }}
{{- end }}

{{/*
The keys of the S3 Secret, space-separated. The same keys as pipelines/k8s.py S3_SECRET_KEYS (the pipeline
pods read them; tests/cluster/test_secret_keys.py checks that both lists, NOTES.txt, values.yaml and
docs/cluster.md agree). Each key becomes the environment variable of the same name.
*/}}
{{- define "ensemw2s.s3SecretKeys" -}}
AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY S3_ENDPOINT_URL
{{- end }}

{{- define "ensemw2s.kfpNamespace" -}}
{{- default .Release.Namespace .Values.kfp.namespace }}
{{- end }}

{{/*
Arguments every `ensemw2s submit|schedule` of the chart gets, as a JSON list: the KFP endpoint, pipeline,
experiment and (multi-user) the profile namespace.
*/}}
{{- define "ensemw2s.kfpArgs" -}}
{{- $args := list "--host" "$(KFP_HOST)" "--pipeline" .Values.kfp.pipeline "--experiment" .Values.kfp.experiment }}
{{- if .Values.kfp.multiUser }}
{{- $args = concat $args (list "--namespace" (include "ensemw2s.kfpNamespace" .)) }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/*
The config arguments, as a JSON list: the mounted config file, and the cluster settings the chart owns (the S3
Secret every pipeline pod reads, the image pull secrets of every pipeline pod).
*/}}
{{- define "ensemw2s.configArgs" -}}
{{- $args := list "--config" (include "ensemw2s.configPath" .) "--set" (printf "resources.s3_secret_name=%s" .Values.s3.existingSecret) }}
{{- with .Values.imagePullSecrets }}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
{{- $args = concat $args (list "--set" (printf "resources.image_pull_secrets=[%s]" (join "," $names))) }}
{{- end }}
{{- toJson $args }}
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
{{- fail (printf "s3.existingSecret: name the existing Secret with the keys %s (the chart never creates one)" (include "ensemw2s.s3SecretKeys" . | splitList " " | join ", ")) }}
{{- end }}
{{- $config := toString .Values.ablations }}
{{- if not (trim $config) }}
{{- fail "ablations: empty; give the ablation config as a YAML string (format: configs/ablations.yaml), e.g. --set-file ablations=my-ablations.yaml" }}
{{- end }}
{{- $parsed := fromYaml $config }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "ablations: not a YAML mapping (%s)" (get $parsed "Error")) }}
{{- end }}
{{- $top := list "base" "grid" "seeds" "parallelism" "fork_from" }}
{{- $ablationKeys := list }}
{{- $otherKeys := list }}
{{- range $k, $_ := $parsed }}
{{- if has $k $top }}{{ $ablationKeys = append $ablationKeys $k }}{{ else }}{{ $otherKeys = append $otherKeys $k }}{{ end }}
{{- end }}
{{- if and $ablationKeys $otherKeys }}
{{- fail (printf "ablations: mixes ablation keys (%s) with config sections (%s); config sections belong under 'base:'" (join ", " $ablationKeys) (join ", " $otherKeys)) }}
{{- end }}
{{- if .Values.kfp.multiUser }}
{{- if not .Values.kfp.serviceAccountToken.enabled }}
{{- fail "kfp.serviceAccountToken.enabled: must be true with kfp.multiUser (multi-user KFP rejects requests without the ServiceAccount token)" }}
{{- end }}
{{- if and .Values.serviceAccount.create (not .Values.rbac.create) }}
{{- fail "rbac.create: must be true with kfp.multiUser and a ServiceAccount created by the chart (the KFP API authorizes it with RBAC on pipelines.kubeflow.org); or set serviceAccount.create=false and serviceAccount.name to one that has those permissions (e.g. default-editor)" }}
{{- end }}
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
        {{- with $v.kfp.uiUrl }}
        - name: KF_PIPELINES_UI_ENDPOINT
          value: {{ . | quote }}
        {{- end }}
        - name: ENSEMW2S_HOME
          value: {{ $v.scratch.cacheDir | quote }}
        {{- range (include "ensemw2s.s3SecretKeys" $root | splitList " ") }}
        - name: {{ . }}
          valueFrom:
            secretKeyRef:
              name: {{ $v.s3.existingSecret | quote }}
              key: {{ . }}
        {{- end }}
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
