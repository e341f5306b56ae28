"""Celery workers: the actor API, the task runtime and the demo actors."""
