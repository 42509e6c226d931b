"""GET /auth/authorize: an API key in, a signed JWT out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from api_stub import responses as docs
from api_stub.auth import AuthError, find_key, issue_token
from api_stub.deps import settings_of, transaction
from api_stub.errors import ApiError

router = APIRouter()


@router.get("/auth/authorize", response_model=None, responses=docs.AUTHORIZE)
def authorize(
    request: Request, x_api_key: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    if not x_api_key:
        raise ApiError(401, "unauthorized", "missing x-api-key header")
    settings = settings_of(request)
    with transaction(request) as session:
        try:
            key = find_key(session, x_api_key)
        except AuthError as exc:
            raise ApiError(401, "unauthorized", str(exc)) from exc
        token = issue_token(settings, key)
    return {
        "data": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": settings.jwt_ttl_seconds,
        }
    }
