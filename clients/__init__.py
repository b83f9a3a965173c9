"""Client library and operator CLI for the rollout sidecar."""
