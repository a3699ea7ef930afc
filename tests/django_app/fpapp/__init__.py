"""Minimal Django app for tests/test_django.py (one model, table name from FP_DJ_TABLE)."""
