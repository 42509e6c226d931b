"""`reversals bench`: the project's benchmark, with its anchors measured in the same run.

Absolute figures depend on the machine and on what else runs on it; the ratios
against the anchors (a plain Celery task, a one-transaction Celery task, Celery's
publish rate, pgbench) are what the targets of SPEC §9 are about.
"""
