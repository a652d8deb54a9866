{{/*
rapport.toml, rendered from values. Only non-secret keys: storage.url, cache.url and delivery.smtp_url come
from Secrets through RAPPORT__SECTION__KEY environment variables; token files are mounted from Secrets.
*/}}
{{- define "rapport.configToml" -}}
# Rendered by the rapport Helm chart; edit values, not this file.
# Layering: embedded defaults, then this file, then RAPPORT__SECTION__KEY environment variables.

[server]
grpc_listen = {{ printf "0.0.0.0:%v" .Values.ports.grpc | toJson }}
http_listen = {{ printf "0.0.0.0:%v" .Values.ports.http | toJson }}
data_dir = "/data"
shutdown_grace_seconds = {{ int .Values.config.shutdownGraceSeconds }}

[auth]
admin_token_file = {{ printf "%s/admin-token" (include "rapport.secretsDir" .) | toJson }}
{{- if include "rapport.jwtConfigured" . }}
jwt_hs256_secret_file = {{ printf "%s/jwt-hs256-secret" (include "rapport.secretsDir" .) | toJson }}
{{- end }}
{{- with .Values.config.jwtIssuer }}
jwt_issuer = {{ toJson . }}
{{- end }}
{{- with .Values.config.jwtAudience }}
jwt_audience = {{ toJson . }}
{{- end }}

[telemetry]
log_format = {{ toJson .Values.config.logFormat }}
log_filter = {{ toJson .Values.config.logFilter }}

[clients]
# clients.<service> is set per Deployment through the environment: only for the services a pod does not run.
token_file = {{ printf "%s/admin-token" (include "rapport.secretsDir" .) | toJson }}
{{- with .Values.config.fileSinkDir }}

[delivery]
file_sink_dir = {{ toJson . }}
{{- end }}
{{- end }}

{{/* Checksum of the Secret values from values, so pods roll when a credential given in values changes. */}}
{{- define "rapport.secretChecksum" -}}
{{- list .Values.database .Values.cache .Values.auth .Values.smtp | toJson | sha256sum }}
{{- end }}
