"""API keys (stored only as SHA-256 hashes) and the JWTs they are exchanged for.

Keys are 256-bit random strings, so a plain SHA-256 is the right hash: there is
nothing to brute-force, and lookup by hash stays one indexed read. Tokens are
HS256 only (an `alg` of `none` or RS256 is refused), with issuer, expiry and the
brand; each names its key, so revoking the key ends its tokens too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.ledger.wallet import utcnow
from worker.models import ApiKey, Brand
from worker.settings import Settings

ALGORITHM = "HS256"
KEY_PREFIX = "rk_"
PREFIX_LENGTH = 8  # what an operator sees of a key, and names it by to revoke it


class AuthError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    brand_id: uuid.UUID
    key_id: uuid.UUID


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_brand(
    session: Session, name: str, settings: dict[str, object] | None = None
) -> tuple[Brand, str]:
    """A brand and its first API key. The key is returned once and never stored."""
    brand = Brand(id=uuid.uuid4(), name=name, settings=settings or {})
    session.add(brand)
    session.flush()
    return brand, create_api_key(session, brand.id)


def create_api_key(session: Session, brand_id: uuid.UUID) -> str:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(brand_id=brand_id, key_hash=hash_key(api_key), prefix=api_key[:PREFIX_LENGTH])
    )
    session.flush()
    return api_key


def find_key(session: Session, api_key: str) -> ApiKey:
    digest = hash_key(api_key)
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
    # The index finds the row; the comparison that decides is constant-time anyway.
    if key is None or not hmac.compare_digest(key.key_hash, digest) or key.revoked_at is not None:
        raise AuthError("invalid API key")
    return key


def issue_token(settings: Settings, key: ApiKey) -> str:
    now = utcnow()
    claims = {
        "iss": settings.jwt_issuer,
        "sub": str(key.brand_id),
        "kid": str(key.id),
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=settings.jwt_ttl_seconds),
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM)


def decode_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "iss", "sub", "kid"]},
        )
        return Principal(brand_id=uuid.UUID(claims["sub"]), key_id=uuid.UUID(claims["kid"]))
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthError("invalid or expired token") from exc


class KeyNotFound(LookupError):
    pass


def revoke_api_key(session: Session, brand_id: uuid.UUID | None, prefix_or_id: str) -> ApiKey:
    """Revoke one key, named by its id, its 8-character prefix or the whole key.

    `brand_id` None searches every brand (the operator's CLI). A prefix that names
    more than one live key is refused rather than guessed at. Revoking a revoked key
    changes nothing; its tokens stop at once, since each request checks the key.
    """
    value = prefix_or_id.strip()
    query = select(ApiKey)
    if brand_id is not None:
        query = query.where(ApiKey.brand_id == brand_id)
    try:
        query = query.where(ApiKey.id == uuid.UUID(value))
    except ValueError:
        if len(value) > PREFIX_LENGTH:
            query = query.where(ApiKey.key_hash == hash_key(value))
        else:
            query = query.where(ApiKey.prefix == value)
    keys = list(session.scalars(query.with_for_update()))
    if not keys:
        raise KeyNotFound(f"no API key matches {value!r}")
    live = [k for k in keys if k.revoked_at is None]
    if len(live) > 1:
        raise KeyNotFound(f"{len(live)} live keys start with {value!r}: name one by its id")
    key = live[0] if live else keys[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def key_is_live(session: Session, principal: Principal) -> bool:
    key = session.get(ApiKey, principal.key_id)
    return key is not None and key.revoked_at is None and key.brand_id == principal.brand_id
