"""The thin HTTP intake: authenticates, validates, records in PostgreSQL, enqueues after commit."""
