"""Rollout sidecar: gRPC model-serving sidecar for safe ML model rollouts."""

__version__ = "0.1.0"
