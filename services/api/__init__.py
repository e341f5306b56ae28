"""The HTTP API: submit, inspect and cancel tasks; health, metrics and live events."""
