"""OpenTelemetry: tracer provider set-up, span names and attributes, span processors."""
