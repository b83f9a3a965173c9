"""Fleet mode on Redis: the key layout, the connection, membership, the leader lease and
the fleet-wide statistics (`state.backend: redis`)."""
