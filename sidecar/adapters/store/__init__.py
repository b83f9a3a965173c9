"""State stores and the audit log: file (embedded default) and in-memory."""
