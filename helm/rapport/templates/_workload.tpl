{{/*
The pod pieces every Rapport container shares (the serving containers, the SQLite migration init container and
the migration Job): environment, volumes and mounts. Each takes (dict "root" $ "component" name).
*/}}

{{/* Environment of a Rapport container: credentials from Secrets, telemetry, remote clients, extra env. */}}
{{- define "rapport.env" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- if include "rapport.database.configured" $root }}
- name: RAPPORT__STORAGE__URL
  valueFrom:
    secretKeyRef:
      {{- include "rapport.secretKeyRef" (dict "root" $root "existingSecret" $v.database.existingSecret "existingKey" $v.database.existingSecretKey "chartKey" "database-url") | trim | nindent 6 }}
{{- end }}
{{- if and (ne .component "migrate") (or $v.cache.url $v.cache.existingSecret) }}
- name: RAPPORT__CACHE__URL
  valueFrom:
    secretKeyRef:
      {{- include "rapport.secretKeyRef" (dict "root" $root "existingSecret" $v.cache.existingSecret "existingKey" $v.cache.existingSecretKey "chartKey" "redis-url") | trim | nindent 6 }}
{{- end }}
{{- if and (has .component (list "allInOne" "delivery")) (or $v.smtp.url $v.smtp.existingSecret) }}
- name: RAPPORT__DELIVERY__SMTP_URL
  valueFrom:
    secretKeyRef:
      {{- include "rapport.secretKeyRef" (dict "root" $root "existingSecret" $v.smtp.existingSecret "existingKey" $v.smtp.existingSecretKey "chartKey" "smtp-url") | trim | nindent 6 }}
{{- end }}
{{- with $v.config.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "rapport-%s" (include "rapport.componentLabel" .component) | quote }}
{{- if include "rapport.isMicroservices" $root }}
{{- range $svc := splitList " " (include "rapport.serviceNames" $root) }}
{{- if ne $svc $.component }}
{{- $url := include "rapport.serviceUrl" (dict "root" $root "service" $svc) }}
{{- if $url }}
- name: {{ printf "RAPPORT__CLIENTS__%s" (upper $svc) }}
  value: {{ $url | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts of a Rapport container. */}}
{{- define "rapport.volumeMounts" -}}
- name: config
  mountPath: /etc/rapport
  readOnly: true
- name: secrets
  mountPath: {{ include "rapport.secretsDir" .root }}
  readOnly: true
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Volumes of a Rapport pod. The data volume is a claim only for allInOne with persistence. */}}
{{- define "rapport.volumes" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
- name: config
  configMap:
    name: {{ include "rapport.fullname" $root }}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ default (include "rapport.secretName" $root) $v.auth.existingSecret }}
          items:
            - key: {{ ternary $v.auth.adminTokenKey "admin-token" (not (empty $v.auth.existingSecret)) }}
              path: admin-token
            {{- if include "rapport.jwtConfigured" $root }}
            - key: {{ ternary $v.auth.jwtSigningKeyKey "jwt-hs256-secret" (not (empty $v.auth.existingSecret)) }}
              path: jwt-hs256-secret
            {{- end }}
- name: data
  {{- if and (eq .component "allInOne") $v.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "rapport.fullname" $root)) $v.persistence.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* Topology spread constraints of a component, each given the component's label selector if it has none. */}}
{{- define "rapport.topologySpread" -}}
{{- $selector := include "rapport.componentSelectorLabels" . | fromYaml }}
{{- $constraints := list }}
{{- range (index .root.Values .component).topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $constraints = append $constraints $c }}
{{- end }}
{{- with $constraints }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* The Deployment of a component. */}}
{{- define "rapport.deployment" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $c := index $v .component }}
{{- $name := include "rapport.componentFullname" . }}
{{- $grpcService := include "rapport.grpcServiceName" .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "rapport.componentLabels" . | nindent 4 }}
spec:
  {{- if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if include "rapport.database.isSqlite" $root }}
  # SQLite lives in one pod's data volume: never run two pods on it at once.
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "rapport.componentSelectorLabels" . | trim | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "rapport.componentSelectorLabels" . | nindent 8 }}
        {{- with (merge (dict) $c.podLabels $v.podLabels) }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "rapport.configToml" $root | sha256sum }}
        checksum/secret: {{ include "rapport.secretChecksum" $root }}
        {{- with (merge (dict) $c.podAnnotations $v.podAnnotations) }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "rapport.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      {{- if and (eq .component "allInOne") (include "rapport.migrations.asInitContainer" $root) }}
      initContainers:
        - name: migrate
          image: {{ include "rapport.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: ["migrate", "--config", "/etc/rapport/rapport.toml", "--services", "all"]
          env:
            {{- include "rapport.env" (dict "root" $root "component" "migrate") | trim | nindent 12 }}
          securityContext:
            {{- toYaml $v.containerSecurityContext | nindent 12 }}
          {{- with $v.migrations.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            {{- include "rapport.volumeMounts" . | nindent 12 }}
      {{- end }}
      containers:
        - name: rapport
          image: {{ include "rapport.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          {{- if eq .component "allInOne" }}
          args: ["serve", "--config", "/etc/rapport/rapport.toml", "--services", "all"]
          {{- else }}
          args: ["serve", "--config", "/etc/rapport/rapport.toml", "--services", {{ .component | quote }}]
          {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $v.ports.grpc }}
              protocol: TCP
            - name: http
              containerPort: {{ $v.ports.http }}
              protocol: TCP
          env:
            {{- include "rapport.env" . | trim | nindent 12 }}
            {{- with $c.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            grpc:
              port: {{ $v.ports.grpc }}
              {{- with $grpcService }}
              service: {{ . }}
              {{- end }}
            {{- toYaml $v.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $v.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            {{- toYaml $v.probes.readiness | nindent 12 }}
          securityContext:
            {{- toYaml $v.containerSecurityContext | nindent 12 }}
          {{- with $c.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            {{- include "rapport.volumeMounts" . | nindent 12 }}
      volumes:
        {{- include "rapport.volumes" . | trim | nindent 8 }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "rapport.topologySpread" . }}
      topologySpreadConstraints:
        {{- . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* The Service of a component: gRPC and HTTP. */}}
{{- define "rapport.service" -}}
{{- $v := .root.Values }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "rapport.componentFullname" . }}
  labels:
    {{- include "rapport.componentLabels" . | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "rapport.componentSelectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.service.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    - name: http
      port: {{ $v.service.httpPort }}
      targetPort: http
      protocol: TCP
      appProtocol: http
{{- end }}

{{/* The HorizontalPodAutoscaler of a component, when autoscaling is on. */}}
{{- define "rapport.hpa" -}}
{{- $a := (index .root.Values .component).autoscaling }}
{{- if $a.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "rapport.componentFullname" . }}
  labels:
    {{- include "rapport.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "rapport.componentFullname" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
{{- end }}
{{- end }}

{{/* The PodDisruptionBudget of a component, when enabled. */}}
{{- define "rapport.pdb" -}}
{{- $p := (index .root.Values .component).podDisruptionBudget }}
{{- if $p.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "rapport.componentFullname" . }}
  labels:
    {{- include "rapport.componentLabels" . | nindent 4 }}
spec:
  {{- if $p.minAvailable }}
  minAvailable: {{ $p.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $p.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "rapport.componentSelectorLabels" . | trim | nindent 6 }}
{{- end }}
{{- end }}
