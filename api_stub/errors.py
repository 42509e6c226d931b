"""One error shape everywhere: {"error": {"code", "message", "details"}}.

Convention: every validation failure (malformed JSON, wrong types, unknown
fields, a non-UUID id) is 422; 400 is not used.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.intake import IntakeError


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(IntakeError)
    async def _intake(_: Request, exc: IntakeError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "type": e.get("type"), "msg": e.get("msg")}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(422, "malformed_json", "request body is not valid JSON", errors)
        return error_response(422, "validation_error", "request is not valid", errors)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        # A connection lost or refused, a deadlock, a serialization failure: what the
        # worker retries. Safe to send again for idempotent requests (docs/decisions.md).
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            return error_response(
                503,
                "database_unavailable",
                "the database could not complete the request; retry it",
                headers={"Retry-After": "1"},
            )
        raise exc

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's refusal of a body its JSON parser gave up on (bad UTF-8, nesting
            # or a number too large): malformed JSON, so 422 by the convention above.
            return error_response(422, "malformed_json", "request body is not valid JSON")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), None, dict(exc.headers) if exc.headers else None
        )
