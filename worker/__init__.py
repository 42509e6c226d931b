"""Loyalty event reversal service: ledger, Celery worker and operations CLI."""
