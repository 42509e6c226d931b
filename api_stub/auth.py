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
import threading
import time
import uuid
from collections import OrderedDict
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


def _decode(settings: Settings, token: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "iss", "sub", "kid"]},
        )
        who = Principal(brand_id=uuid.UUID(claims["sub"]), key_id=uuid.UUID(claims["kid"]))
        return who, float(claims["exp"])
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthError("invalid or expired token") from exc


def decode_token(settings: Settings, token: str) -> Principal:
    return _decode(settings, token)[0]


# Tokens already verified in this process. A client sends the same token for up to an
# hour, and verifying its HMAC on every request is a measurable share of a request's
# CPU. Only a token that verified is remembered, under the secret and issuer it
# verified with, and only until its own `exp`: a hit is exactly what jwt.decode would
# answer now (the signature cannot change; nbf and iat were already in the past).
_VERIFIED: OrderedDict[tuple[str, str, str], tuple[Principal, float]] = OrderedDict()
_VERIFIED_MAX = 4096
_verified_lock = threading.Lock()


def verify_token(settings: Settings, token: str) -> Principal:
    """decode_token, remembering tokens that verified until they expire."""
    key = (settings.jwt_secret, settings.jwt_issuer, token)
    with _verified_lock:
        known = _VERIFIED.get(key)
        if known is not None:
            if time.time() < known[1]:
                _VERIFIED.move_to_end(key)
                return known[0]
            del _VERIFIED[key]
    who, expires = _decode(settings, token)
    with _verified_lock:
        _VERIFIED[key] = (who, expires)
        if len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)
    return who


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
        forget_live_keys()
    return key


# Keys found live, per process, for KEY_LIVE_TTL seconds (docs/decisions.md, HTTP):
# checking the key on every request was a transaction of its own (a pool checkout, a
# ping, a SELECT and a COMMIT) for an answer that changes once in a key's life. Only
# a live answer is remembered; a revoked or unknown key is looked up every time. A
# key in use is looked up again before its answer lapses (api_stub.deps.principal).
KEY_LIVE_TTL = 2.0
_LIVE: dict[tuple[uuid.UUID, uuid.UUID], float] = {}
_LIVE_MAX = 4096
_live_lock = threading.Lock()
# Bumped by every forget: a look-up that began before a revocation made here must
# not remember its (then stale) live answer after it.
_generation = [0]


def forget_live_keys() -> None:
    """Drop this process's liveness cache: a revocation made here applies at once."""
    with _live_lock:
        _LIVE.clear()
        _generation[0] += 1


def forget_live_key(principal: Principal) -> None:
    """Drop one key's live answer: a look-up found it revoked."""
    with _live_lock:
        _LIVE.pop((principal.key_id, principal.brand_id), None)


def live_generation() -> int:
    """Taken before a look-up, handed to `remember_live` after it."""
    with _live_lock:
        return _generation[0]


def key_live_for(principal: Principal) -> float | None:
    """How many seconds the key's live answer still holds in this process; None: none does."""
    with _live_lock:
        until = _LIVE.get((principal.key_id, principal.brand_id))
    if until is None:
        return None
    left = until - time.monotonic()
    return left if left > 0 else None


def remember_live(principal: Principal, generation: int) -> None:
    """Remember a live answer from a look-up that began at `generation` (live_generation)."""
    with _live_lock:
        if generation != _generation[0]:
            return  # a revocation here since the look-up began: it may be stale
        if len(_LIVE) >= _LIVE_MAX:
            _LIVE.clear()
        _LIVE[(principal.key_id, principal.brand_id)] = time.monotonic() + KEY_LIVE_TTL


def key_is_live(session: Session, principal: Principal) -> bool:
    key = session.get(ApiKey, principal.key_id)
    return key is not None and key.revoked_at is None and key.brand_id == principal.brand_id
