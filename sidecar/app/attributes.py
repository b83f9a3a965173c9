"""Span attribute names the application layer sets (OpenTelemetry semantic conventions
for feature flags, plus the sidecar's own `sidecar.*` names)."""

FLAG_KEY = "feature_flag.key"
FLAG_VARIANT = "feature_flag.result.variant"
FLAG_REASON = "feature_flag.result.reason"
FLAG_PROVIDER = "feature_flag.provider.name"
PROVIDER = "rollout-sidecar"
REQUEST_ID = "sidecar.request_id"
ROUTED_MODEL = "sidecar.routed_model"  # the routed model (the name apps call)
SHADOW = "sidecar.shadow"
SHADOW_VARIANT = "sidecar.shadow.variant"
SHADOW_AGREED = "sidecar.shadow.agreed"
