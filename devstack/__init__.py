"""Local development and test tooling: embedded PostgreSQL and Redis, per-test databases."""
