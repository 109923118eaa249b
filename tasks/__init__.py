"""Celery tasks: thin adapters that open a unit of work and call one core function."""
