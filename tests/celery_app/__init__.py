"""A Celery app for tests/test_celery.py, imported by a real ``celery worker`` subprocess."""
