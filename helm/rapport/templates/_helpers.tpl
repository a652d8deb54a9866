{{/*
Names, labels and the predicates every template asks: which mode, which components, which database.
A "component" is what one Deployment runs: `allInOne`, or one of the five services in microservices mode.
*/}}

{{- define "rapport.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rapport.fullname" -}}
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

{{- define "rapport.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "rapport.labels" -}}
helm.sh/chart: {{ include "rapport.chart" . }}
{{ include "rapport.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rapport
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "rapport.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rapport.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Mode predicates: "true" or "". */}}
{{- define "rapport.isAllInOne" -}}
{{- if eq .Values.deploymentMode "allInOne" }}true{{ end }}
{{- end }}

{{- define "rapport.isMicroservices" -}}
{{- if eq .Values.deploymentMode "microservices" }}true{{ end }}
{{- end }}

{{/* The five services, in dependency order. Space separated; use with splitList. */}}
{{- define "rapport.serviceNames" -}}
identity consent profile decision delivery
{{- end }}

{{/*
Components this release runs: `allInOne`, or the enabled services in microservices mode (nothing for an
unknown mode; validate.yaml fails on it). Space separated; use with splitList.
*/}}
{{- define "rapport.components" -}}
{{- if include "rapport.isAllInOne" . }}
{{- "allInOne" }}
{{- else if include "rapport.isMicroservices" . }}
{{- $enabled := list }}
{{- range $svc := splitList " " (include "rapport.serviceNames" .) }}
{{- if (index $.Values $svc).enabled }}
{{- $enabled = append $enabled $svc }}
{{- end }}
{{- end }}
{{- join " " $enabled }}
{{- end }}
{{- end }}

{{/* Whether a service runs in this release: "true" or "". Takes (dict "root" $ "service" name). */}}
{{- define "rapport.serviceEnabled" -}}
{{- $root := .root }}
{{- if include "rapport.isAllInOne" $root }}true
{{- else if and (include "rapport.isMicroservices" $root) (index $root.Values .service).enabled }}true
{{- end }}
{{- end }}

{{/*
Who calls whom over gRPC (calls and change-feed streams), used for NetworkPolicy and client URLs.
*/}}
{{- define "rapport.callees" -}}
identity: []
consent: [identity, profile, decision, delivery]
profile: [identity, consent]
decision: [profile, consent, delivery]
delivery: [consent, profile]
{{- end }}

{{/* The services that call a service: takes (dict "root" $ "service" name), returns a space separated list. */}}
{{- define "rapport.callers" -}}
{{- $callees := include "rapport.callees" .root | fromYaml }}
{{- $callers := list }}
{{- range $svc := splitList " " (include "rapport.serviceNames" .root) }}
{{- if has $.service (index $callees $svc) }}
{{- $callers = append $callers $svc }}
{{- end }}
{{- end }}
{{- join " " $callers }}
{{- end }}

{{/* Value "allInOne" -> label "all-in-one"; services keep their name. */}}
{{- define "rapport.componentLabel" -}}
{{- if eq . "allInOne" }}all-in-one{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* Resource name of a component: takes (dict "root" $ "component" name). */}}
{{- define "rapport.componentFullname" -}}
{{- $fullname := include "rapport.fullname" .root }}
{{- if eq .component "allInOne" }}
{{- $fullname }}
{{- else }}
{{- printf "%s-%s" ($fullname | trunc 52 | trimSuffix "-") .component }}
{{- end }}
{{- end }}

{{/* Labels and selector labels of a component: takes (dict "root" $ "component" name). */}}
{{- define "rapport.componentLabels" -}}
{{ include "rapport.labels" .root }}
app.kubernetes.io/component: {{ include "rapport.componentLabel" .component }}
{{- end }}

{{- define "rapport.componentSelectorLabels" -}}
{{ include "rapport.selectorLabels" .root }}
app.kubernetes.io/component: {{ include "rapport.componentLabel" .component }}
{{- end }}

{{/* Full gRPC service name used by grpc.health.v1, e.g. rapport.profile.v1.ProfileService; "" for allInOne. */}}
{{- define "rapport.grpcServiceName" -}}
{{- if ne . "allInOne" }}
{{- printf "rapport.%s.v1.%sService" . (title .) }}
{{- end }}
{{- end }}

{{/* URL another pod uses to reach a service: takes (dict "root" $ "service" name). */}}
{{- define "rapport.serviceUrl" -}}
{{- $override := index .root.Values.config.clients .service }}
{{- if $override }}
{{- $override }}
{{- else if include "rapport.serviceEnabled" . }}
{{- printf "http://%s:%v" (include "rapport.componentFullname" (dict "root" .root "component" .service)) .root.Values.service.grpcPort }}
{{- end }}
{{- end }}

{{- define "rapport.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rapport.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rapport.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret the chart creates. */}}
{{- define "rapport.secretName" -}}
{{- include "rapport.fullname" . }}
{{- end }}

{{/*
Database predicates. The database is "configured" when a URL is given in values or in an existing Secret; it
is SQLite when the URL says sqlite: or when nothing is configured (the binary's embedded default).
*/}}
{{- define "rapport.database.configured" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "rapport.database.isSqlite" -}}
{{- if not (include "rapport.database.configured" .) }}true
{{- else if and (not .Values.database.existingSecret) (hasPrefix "sqlite:" (lower .Values.database.url)) }}true
{{- end }}
{{- end }}

{{/* Where a secret value comes from: (dict "existingSecret" .. "existingKey" .. "chartKey" ..) and root. */}}
{{- define "rapport.secretKeyRef" -}}
{{- if .existingSecret }}
name: {{ .existingSecret }}
key: {{ .existingKey }}
{{- else }}
name: {{ include "rapport.secretName" .root }}
key: {{ .chartKey }}
{{- end }}
{{- end }}

{{/* Mount path of secret files (admin token, JWT key). */}}
{{- define "rapport.secretsDir" -}}
/var/run/secrets/rapport
{{- end }}

{{/* Whether a JWT HS256 key is configured: "true" or "". */}}
{{- define "rapport.jwtConfigured" -}}
{{- if .Values.auth.existingSecret }}
{{- if .Values.auth.jwtSigningKeyKey }}true{{ end }}
{{- else if .Values.auth.jwtSigningKey }}true
{{- end }}
{{- end }}

{{/* Services `rapport migrate` handles: all in allInOne, the enabled ones in microservices mode. */}}
{{- define "rapport.migrateServices" -}}
{{- if include "rapport.isAllInOne" . }}all{{ else }}{{ include "rapport.components" . | replace " " "," }}{{ end }}
{{- end }}

{{/* Whether migrations run as the pre-install/pre-upgrade Job (PostgreSQL) rather than an init container. */}}
{{- define "rapport.migrations.asJob" -}}
{{- if and .Values.migrations.enabled (not (include "rapport.database.isSqlite" .)) }}true{{ end }}
{{- end }}

{{- define "rapport.migrations.asInitContainer" -}}
{{- if and .Values.migrations.enabled (include "rapport.database.isSqlite" .) }}true{{ end }}
{{- end }}

{{/*
Fail rendering with a message that says what is wrong and how to fix it. values.schema.json catches most
shape errors first; these are the rules that span several values.
*/}}
{{- define "rapport.validate" -}}
{{- $mode := .Values.deploymentMode }}
{{- if not (or (eq $mode "allInOne") (eq $mode "microservices")) }}
{{- fail (printf "unknown deploymentMode %q: use allInOne or microservices" $mode) }}
{{- end }}
{{- if include "rapport.isMicroservices" . }}
{{- if not (include "rapport.database.configured" .) }}
{{- fail "deploymentMode microservices needs a PostgreSQL database: set database.url (postgres://...) or database.existingSecret. Without one every pod falls back to SQLite, and SQLite is only allowed in allInOne because each pod would get its own private database" }}
{{- end }}
{{- if include "rapport.database.isSqlite" . }}
{{- fail (printf "database.url %q is SQLite: SQLite is only allowed in allInOne because each pod would get its own private database; use PostgreSQL (postgres://...) in microservices mode" .Values.database.url) }}
{{- end }}
{{- if not (include "rapport.components" .) }}
{{- fail "deploymentMode microservices with every service disabled: enable at least one of identity, consent, profile, decision, delivery" }}
{{- end }}
{{- if and (or .Values.ingress.enabled .Values.httpRoute.enabled) (not .Values.delivery.enabled) }}
{{- fail "ingress.enabled or httpRoute.enabled needs delivery.enabled: the tracking and unsubscribe endpoints are served by the delivery service" }}
{{- end }}
{{- end }}
{{- if and (include "rapport.isAllInOne" .) (include "rapport.database.isSqlite" .) }}
{{- if or (gt (int .Values.allInOne.replicas) 1) .Values.allInOne.autoscaling.enabled }}
{{- fail "allInOne with SQLite runs exactly one replica (allInOne.replicas: 1, allInOne.autoscaling.enabled: false): each pod would get its own private database; use PostgreSQL (database.url) to scale" }}
{{- end }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs: the Gateway(s) the route attaches to" }}
{{- end }}
{{- end }}

{{/* The component serving the public HTTP endpoints (tracking, unsubscribe): delivery, or allInOne. */}}
{{- define "rapport.publicComponent" -}}
{{- if include "rapport.isAllInOne" . }}allInOne{{ else }}delivery{{ end }}
{{- end }}
