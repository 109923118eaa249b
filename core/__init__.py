"""The VoiceAppoint domain: plain functions over a unit of work, no HTTP and no Celery."""
