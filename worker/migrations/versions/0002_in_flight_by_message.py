"""events in flight by their message: which messages still have work

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 13:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

IN_FLIGHT = sa.text("status IN ('PENDING', 'PROCESSING')")


def upgrade() -> None:
    op.create_index(
        "ix_events_in_flight_message",
        "events",
        ["queue_message_id"],
        unique=False,
        postgresql_where=IN_FLIGHT,
    )


def downgrade() -> None:
    op.drop_index("ix_events_in_flight_message", table_name="events", postgresql_where=IN_FLIGHT)
