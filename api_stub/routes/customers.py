"""A customer's wallet and transactions."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from api_stub import responses as docs
from api_stub.deps import CurrentBrand, transaction
from api_stub.errors import ApiError
from worker.ledger.views import campaign_names, transaction_view, wallet_view
from worker.models import Customer, Line, Transaction

router = APIRouter(prefix="/customers")


def _customer(
    request: Request, session: Any, brand_id: uuid.UUID, customer_id: uuid.UUID
) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None or customer.brand_id != brand_id:
        raise ApiError(404, "not_found", f"customer {customer_id} not found")
    return customer  # type: ignore[no-any-return]  # session.get on Any-typed session


@router.get("/{customer_id}/wallet", response_model=None, responses=docs.WALLET)
def wallet(customer_id: uuid.UUID, request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        customer = _customer(request, session, who.brand_id, customer_id)
        view = wallet_view(session, customer_id)
        view["tier"] = customer.tier
    return {"data": view}


@router.get("/{customer_id}/transactions", response_model=None, responses=docs.TRANSACTIONS)
def transactions(
    customer_id: uuid.UUID,
    request: Request,
    who: CurrentBrand,
    # Bounded by the bigint it is compared with: a larger one is a 422, not a 500.
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Newest first. `next_cursor` is the position to pass as `cursor` for the next page."""
    with transaction(request) as session:
        _customer(request, session, who.brand_id, customer_id)
        query = select(Transaction).where(Transaction.customer_id == customer_id)
        if cursor is not None:
            query = query.where(Transaction.seq < cursor)
        rows = list(session.scalars(query.order_by(Transaction.seq.desc()).limit(limit + 1)))
        page = rows[:limit]
        line_ids = {tx.line_id for tx in page if tx.line_id}
        lines = {ln.id: ln for ln in session.scalars(select(Line).where(Line.id.in_(line_ids)))}
        names = campaign_names(session, who.brand_id)
        data = [
            transaction_view(tx, lines.get(tx.line_id) if tx.line_id else None, names)
            for tx in page
        ]
    next_cursor = page[-1].seq if len(rows) > limit else None
    return {"data": data, "next_cursor": next_cursor}
