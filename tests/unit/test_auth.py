"""Tokens and keys, without a database."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from api_stub.auth import AuthError, decode_token, hash_key, issue_token, verify_token
from worker.models import ApiKey
from worker.settings import Settings

SETTINGS = Settings(jwt_secret="unit-secret-" + "0123456789abcdef" * 4, database_url="x")


def _key() -> ApiKey:
    return ApiKey(id=uuid.uuid4(), brand_id=uuid.uuid4(), key_hash="0" * 64, prefix="rk_")


def test_a_token_names_its_brand_and_key() -> None:
    key = _key()
    who = decode_token(SETTINGS, issue_token(SETTINGS, key))
    assert (who.brand_id, who.key_id) == (key.brand_id, key.id)


def test_keys_are_stored_as_sha256_only() -> None:
    assert hash_key("rk_abc") == hash_key("rk_abc")
    assert hash_key("rk_abc") != hash_key("rk_abd")
    assert len(hash_key("rk_abc")) == 64 and "rk_abc" not in hash_key("rk_abc")


def _claims(**override: object) -> dict[str, object]:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "iss": SETTINGS.jwt_issuer,
        "sub": str(uuid.uuid4()),
        "kid": str(uuid.uuid4()),
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    claims.update(override)
    return claims


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(
            _claims(exp=datetime.now(UTC) - timedelta(seconds=5)),
            SETTINGS.jwt_secret,
            algorithm="HS256",
        ),
        jwt.encode(_claims(iss="someone-else"), SETTINGS.jwt_secret, algorithm="HS256"),
        jwt.encode(_claims(), "another-secret-0123456789abcdef0123", algorithm="HS256"),
        jwt.encode(_claims(), SETTINGS.jwt_secret, algorithm="HS512"),
        "not-a-token",
        "",
    ],
    ids=["expired", "wrong-issuer", "wrong-secret", "wrong-algorithm", "garbage", "empty"],
)
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError):
        decode_token(SETTINGS, token)
    with pytest.raises(AuthError):
        verify_token(SETTINGS, token)


def test_a_remembered_token_is_refused_once_it_expires_or_under_another_secret() -> None:
    """verify_token remembers a verified token only until its exp, and per secret."""
    expires = int(time.time()) + 1
    token = jwt.encode(_claims(exp=expires), SETTINGS.jwt_secret, algorithm="HS256")
    who = verify_token(SETTINGS, token)
    assert verify_token(SETTINGS, token) == who == decode_token(SETTINGS, token)
    other = Settings(jwt_secret="other-secret-" + "0123456789abcdef" * 4, database_url="x")
    with pytest.raises(AuthError):
        verify_token(other, token)
    while time.time() <= expires + 0.05:
        time.sleep(0.05)
    with pytest.raises(AuthError):
        verify_token(SETTINGS, token)


def test_alg_none_is_refused() -> None:
    def part(obj: dict[str, object]) -> str:
        raw = json.dumps(obj, default=str).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = _claims(iat=1, exp=4102444800)
    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
    with pytest.raises(AuthError):
        decode_token(SETTINGS, unsigned)


def test_a_tampered_token_is_refused() -> None:
    token = issue_token(SETTINGS, _key())
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        decode_token(SETTINGS, f"{head}.{forged}.{sig}")
