"""Values travel as one array parameter (worker.models.one_of): `= ANY(:values)`."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from tests.support import World
from worker.db import unit_of_work
from worker.models import Event, one_of

_BY_MESSAGE = select(Event.id).where(one_of(Event.queue_message_id, "message_ids"))


def test_a_longer_string_does_not_match_by_its_first_characters(world: World) -> None:
    # queue_message_id is varchar(64): an array cast to varchar(64)[] would cut a
    # longer value to 64 characters, and the cut value would match this row.
    customer = uuid.uuid4()
    earned = world.event(customer, accumulate=[10])
    stored = "m" * 64
    with unit_of_work(world.factory) as session:
        session.get_one(Event, earned).queue_message_id = stored
    with unit_of_work(world.factory) as session:
        assert session.scalars(_BY_MESSAGE, {"message_ids": [stored + "tail"]}).all() == []
        assert session.scalars(_BY_MESSAGE, {"message_ids": [stored, "x"]}).all() == [earned]
        assert session.scalars(_BY_MESSAGE, {"message_ids": []}).all() == []
    world.check(customer)
