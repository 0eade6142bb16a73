{{/*
Objects every service has. Each takes a component context
  (dict "root" $ "component" "<name>" "svc" .Values.<name>)
and is included by templates/<name>/*.yaml. What differs between services
comes from their values: assignment has grpcPort, analytics has embeddedChdb
and persistence, chat has hotCache and archive.
*/}}

{{/*
Environment sources of a component's pods: the shared ConfigMap, then the
Secret the chart creates (secretEnv), then the existing one. chat's archive
job uses exactly these too.
*/}}
{{- define "livedesk.envFrom" -}}
- configMapRef:
    name: {{ include "livedesk.configMapName" .root }}
{{- if .svc.secretEnv }}
- secretRef:
    name: {{ include "livedesk.secretName" . }}
{{- end }}
{{- with .svc.existingSecret }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- end }}

{{/*
chat's own settings, in its pods and in its archive job alike: the hot cache
and, with the archive on, where the archive is: file://<mountPath>, or the
S3 store with its ARCHIVE_S3_* settings and, from chat.archive.s3.existingSecret,
its AWS keys. Empty S3 settings are left out: botocore's chain (AWS_REGION,
AWS_ENDPOINT_URL_S3, web identity, instance role) fills them in.
*/}}
{{- define "livedesk.chatEnv" -}}
{{- if .svc.redisCluster }}
- name: REDIS_CLUSTER
  value: "true"
{{- end }}
{{- with .svc.hotCache }}
- name: HOT_CACHE_MESSAGES
  value: {{ .messages | quote }}
- name: HOT_CACHE_TTL
  value: {{ .ttlSeconds | quote }}
- name: HOT_CACHE_TIMEOUT
  value: {{ .timeoutSeconds | quote }}
{{- with .redisUrl }}
- name: HOT_CACHE_REDIS_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if and (hasKey .svc "archive") .svc.archive.enabled }}
{{- with .svc.archive.s3 }}
{{- if .url }}
- name: ARCHIVE_URL
  value: {{ .url | quote }}
{{- with .endpointUrl }}
- name: ARCHIVE_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .region }}
- name: ARCHIVE_S3_REGION
  value: {{ . | quote }}
{{- end }}
- name: ARCHIVE_S3_ADDRESSING_STYLE
  value: {{ .addressingStyle | quote }}
{{- with .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
# Only temporary credentials have one.
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SESSION_TOKEN
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- if not (include "livedesk.archiveOnS3" .) }}
- name: ARCHIVE_URL
  value: {{ printf "file://%s" .svc.archive.mountPath | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* "true" when chat's archive is on and in S3 (no volume), else empty. */}}
{{- define "livedesk.archiveOnS3" -}}
{{- if and (hasKey .svc "archive") .svc.archive.enabled .svc.archive.s3.url }}true{{ end }}
{{- end }}

{{/* "true" when chat's archive is on and on a volume (file://<mountPath>), else empty. */}}
{{- define "livedesk.archiveOnVolume" -}}
{{- if and (hasKey .svc "archive") .svc.archive.enabled (not .svc.archive.s3.url) }}true{{ end }}
{{- end }}

{{/* Name of chat's archive claim: the existing one, or "<fullname>-chat-archive". */}}
{{- define "livedesk.archiveClaimName" -}}
{{- .svc.archive.persistence.existingClaim | default (include "livedesk.componentName" (dict "root" .root "component" "chat-archive")) }}
{{- end }}

{{- define "livedesk.serviceAccount" -}}
{{- if and .svc.enabled .root.Values.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "livedesk.serviceAccountName" . }}
  labels:
    {{- include "livedesk.componentLabels" . | nindent 4 }}
  {{- $annotations := merge (dict) .root.Values.serviceAccount.annotations .root.Values.commonAnnotations }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountToken }}
{{- end }}
{{- end }}

{{- define "livedesk.secret" -}}
{{- if and .svc.enabled .svc.secretEnv }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "livedesk.secretName" . }}
  labels:
    {{- include "livedesk.componentLabels" . | nindent 4 }}
  {{- with .root.Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
type: Opaque
stringData:
  {{- range $key, $value := .svc.secretEnv }}
  {{ $key }}: {{ $value | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "livedesk.deployment" -}}
{{- if .svc.enabled }}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $chdb := and (hasKey $svc "embeddedChdb") $svc.embeddedChdb }}
{{- $archive := include "livedesk.archiveOnVolume" . }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "livedesk.componentName" . }}
  labels:
    {{- include "livedesk.componentLabels" . | nindent 4 }}
  {{- with $root.Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "livedesk.componentSelectorLabels" . | nindent 6 }}
  strategy:
    {{- if $chdb }}
    # chDB: one process owns the data directory; never run old and new together.
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "livedesk.componentLabels" . | nindent 8 }}
        {{- with $svc.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when the shared configuration or their Secret changes.
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- if $svc.secretEnv }}
        checksum/secret: {{ include "livedesk.secret" . | sha256sum }}
        {{- end }}
        {{- if $root.Values.metricsAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $svc.port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "livedesk.serviceAccountName" . }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
      enableServiceLinks: false
      # SIGTERM starts the graceful stop (stop accepting, drain, flush): no preStop hook.
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- if $svc.spreadAcrossNodes }}
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "livedesk.componentSelectorLabels" . | nindent 14 }}
      {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "livedesk.image" . | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ $svc.port }}
              protocol: TCP
            {{- if $svc.grpcPort }}
            - name: grpc
              containerPort: {{ $svc.grpcPort }}
              protocol: TCP
            {{- end }}
          env:
            - name: PORT
              value: {{ $svc.port | quote }}
            {{- if $svc.grpcPort }}
            - name: GRPC_PORT
              value: {{ $svc.grpcPort | quote }}
            {{- end }}
            {{- if $chdb }}
            - name: CHDB_PATH
              value: {{ $svc.persistence.mountPath | quote }}
            {{- end }}
            {{- with include "livedesk.chatEnv" . | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $svc.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          envFrom:
            {{- include "livedesk.envFrom" . | nindent 12 }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 2
            timeoutSeconds: 2
            failureThreshold: {{ max 1 (div $svc.startupTimeoutSeconds 2) }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $chdb }}
            - name: data
              mountPath: {{ $svc.persistence.mountPath }}
            {{- end }}
            {{- if $archive }}
            # Archived conversations are read back from here (the job writes them).
            - name: archive
              mountPath: {{ $svc.archive.mountPath }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $svc.tmpSizeLimit }}
        {{- if $chdb }}
        - name: data
          persistentVolumeClaim:
            claimName: {{ $svc.persistence.existingClaim | default (printf "%s-data" (include "livedesk.componentName" .)) }}
        {{- end }}
        {{- if $archive }}
        - name: archive
          persistentVolumeClaim:
            claimName: {{ include "livedesk.archiveClaimName" . }}
        {{- end }}
{{- end }}
{{- end }}

{{- define "livedesk.service" -}}
{{- if .svc.enabled }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "livedesk.componentName" . }}
  labels:
    {{- include "livedesk.componentLabels" . | nindent 4 }}
  {{- with .root.Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .svc.service.type }}
  selector:
    {{- include "livedesk.componentSelectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .svc.service.port }}
      targetPort: http
      protocol: TCP
    {{- if .svc.grpcPort }}
    # gRPC is HTTP/2: a ClusterIP balances connections, not calls.
    - name: grpc
      port: {{ .svc.service.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    {{- end }}
{{- end }}
{{- end }}

{{- define "livedesk.hpa" -}}
{{- if and .svc.enabled .svc.autoscaling.enabled }}
{{- $as := .svc.autoscaling }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "livedesk.componentName" . }}
  labels:
    {{- include "livedesk.componentLabels" . | nindent 4 }}
  {{- with .root.Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "livedesk.componentName" . }}
  minReplicas: {{ $as.minReplicas }}
  maxReplicas: {{ $as.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $as.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      policies:
        - type: Pods
          value: {{ $as.scaleDownPodsPerMinute }}
          periodSeconds: 60
{{- end }}
{{- end }}

{{- define "livedesk.pdb" -}}
{{- if and .svc.enabled .svc.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "livedesk.componentName" . }}
  labels:
    {{- include "livedesk.componentLabels" . | nindent 4 }}
  {{- with .root.Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  maxUnavailable: {{ if kindIs "string" .svc.pdb.maxUnavailable }}{{ .svc.pdb.maxUnavailable | quote }}{{ else }}{{ .svc.pdb.maxUnavailable }}{{ end }}
  # A pod that is not ready serves nobody: evicting it never costs capacity.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "livedesk.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
