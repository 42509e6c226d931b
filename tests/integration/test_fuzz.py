"""Schemathesis against the app's own OpenAPI document (/openapi.json).

Every operation of the document gets generated requests, valid ones (positive) and
invalid ones (negative), authenticated with a real brand's token, against the app
in-process on the test PostgreSQL. Some path ids and body references are swapped for
the brand's real events, customers, rewards and campaigns, so that requests reach
past the 404s and 422s into the ledger. Every answer must be something other than
a 5xx, and must conform to the schema wherever the schema describes it; afterwards
the SPEC §3 invariants must hold over the whole ledger.

Deterministic by default (seed 0); FUZZ_SEED=<n> explores other inputs, and
FUZZ_EXAMPLES=<n> sets the examples per operation and mode.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from api_stub.app import create_app
from tests.support import World
from worker.ledger.invariants import assert_invariants
from worker.settings import get_settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
MIN_REQUESTS = 1000
# Not negative_data_rejection: the schemas strip surrounding whitespace before their
# length limits apply, which OpenAPI cannot say, so a "too long" name padded with a
# newline is rightly accepted. Invalid input is still sent (negative mode) for 5xx.
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


@pytest.fixture()
def fuzz_app(db_factory: Callable[[], Any]) -> Iterator[FastAPI]:
    # The rate limit is tested elsewhere; here it would only turn requests into 429s.
    settings = get_settings().model_copy(
        update={"rate_limit_per_second": 1e9, "rate_limit_burst": 10**9}
    )
    app = create_app(settings, session_factory=db_factory)
    with TestClient(app):
        yield app


class Targets:
    """The brand's real objects, for generated requests to aim at."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.customers = [uuid.uuid4() for _ in range(3)]
        first, second, third = self.customers
        world.event(first, accumulate=[500, 300])
        self.events = [
            world.event(first, accumulate=[120], redeem=[200], gift_cards=1),
            world.event(second, accumulate=[80]),
            world.event(second, accumulate=[40], fulfilled=False),  # a reservation
            world.event(third, accumulate=[10]),
        ]
        world.reverse(world.event(third, accumulate=[25]))
        self.events.append(world.submit(third, accumulate=[5]))  # still PENDING

    def path_ids(self) -> dict[str, list[str]]:
        return {
            "event_id": [str(e) for e in self.events],
            "customer_id": [str(c) for c in self.customers],
            "reward_id": [str(self.world.reward_id)],
            "campaign_id": [str(self.world.campaign_id)],
        }

    def aim(self, case: Any, rng: random.Random) -> None:
        """Point some of a generated case's ids at real objects (in place)."""
        for name, choices in self.path_ids().items():
            if case.path_parameters and name in case.path_parameters and rng.random() < 0.7:
                case.path_parameters[name] = rng.choice(choices)
        body = case.body
        if isinstance(body, dict):
            if "customer_id" in body and rng.random() < 0.5:
                body["customer_id"] = str(rng.choice(self.customers))
            for kind in ("accumulate", "redeem", "gift_cards"):
                items = body.get(kind)
                if isinstance(items, list):
                    for item in items:
                        if isinstance(item, dict) and rng.random() < 0.8:
                            item["reward_id"] = str(self.world.reward_id)
                            if "campaign_id" in item or kind == "accumulate":
                                item["campaign_id"] = str(self.world.campaign_id)
            events = body.get("events")
            if isinstance(events, list):
                for item in events:
                    if isinstance(item, dict) and rng.random() < 0.7:
                        item["id"] = str(rng.choice(self.events))


def _run(
    *,
    strategy: Any,
    targets: Targets,
    rng: random.Random,
    auth: dict[str, str],
    statuses: list[int],
    positive: bool,
) -> None:
    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        if positive:
            targets.aim(case, rng)
        response = case.call(headers=auth)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=auth)

    fuzz()


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_schema(
    fuzz_app: FastAPI, world: World, db_factory: Callable[[], Any]
) -> None:
    targets = Targets(world)
    with TestClient(fuzz_app) as client:
        answer = client.get(
            "/api/storefront/v1/auth/authorize", headers={"x-api-key": world.api_key}
        )
        token = answer.json()["data"]["access_token"]
    auth = {"authorization": f"Bearer {token}", "x-api-key": world.api_key}

    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid OpenAPI
        operations.append(result.ok())
    documented = {(op.method.upper(), op.path) for op in operations}
    assert len(documented) >= 17, documented

    sent: dict[tuple[str, str, str], list[int]] = {}
    rng = random.Random(SEED)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            key = (operation.method.upper(), operation.path, mode.value)
            names = {p.name.lower() for p in operation.headers}
            # The real token (and key) stay in place, so requests get past authentication.
            pinned = {k: v for k, v in auth.items() if k in names}
            strategy = operation.as_strategy(mode, headers=pinned or None)
            statuses = sent.setdefault(key, [])
            try:
                _run(
                    strategy=strategy,
                    targets=targets,
                    rng=rng,
                    auth=auth,
                    statuses=statuses,
                    positive=mode is GenerationMode.POSITIVE,
                )
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): positive cases only.
                assert mode is GenerationMode.NEGATIVE and not statuses, key
                del sent[key]

    every = [status for statuses in sent.values() for status in statuses]
    print(f"\nschemathesis: {len(every)} requests over {len(documented)} operations")  # noqa: T201 - the test's measurement, shown with -s
    assert len(every) >= MIN_REQUESTS, len(every)
    assert {(m, p) for m, p, _ in sent} == documented, "an operation got no request"
    # The requests got past authentication and validation, into the ledger...
    assert sum(1 for s in every if 200 <= s < 300) >= 200, sorted(set(every))
    # ...and every refusal used the project's codes (422 for any bad input, never 400).
    assert set(every) <= {200, 202, 404, 409, 413, 422}, sorted(set(every))
    with db_factory() as session:
        assert_invariants(session, None)
