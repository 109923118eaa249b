"""API keys for upstream apps.

A key is `va_live_<prefix>_<secret>`. The prefix finds the row; the whole key is compared by its SHA-256
digest. Keys carry 256 bits of randomness, so a fast hash is enough (argon2 is for human passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, select, update

from core.db import UnitOfWork
from core.errors import Unauthorized
from core.models import ApiKey, Tenant

KEY_SCHEME = "va_live_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key(tenant_id: uuid.UUID, name: str) -> tuple[ApiKey, str]:
    """A key row to store and the key itself, which only the caller ever sees."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_SCHEME}{prefix}_{secrets.token_urlsafe(32)}"
    return ApiKey(tenant_id=tenant_id, name=name, key_prefix=prefix, key_hash=_digest(key)), key


def create_api_key(uow: UnitOfWork, tenant_id: uuid.UUID, name: str) -> str:
    """Store a new key for the tenant and return it; it is never shown again."""
    row, key = new_api_key(tenant_id, name)
    uow.session.add(row)
    uow.session.flush()
    return key


# The key and whether its tenant still exists, in one round trip: every request of the API begins with it.
_KEY_AND_ITS_TENANT = (
    select(
        ApiKey.id,
        ApiKey.tenant_id,
        ApiKey.key_hash,
        ApiKey.revoked_at,
        ApiKey.last_used_at,
        Tenant.deleted_at.label("tenant_deleted_at"),
    )
    .join(Tenant, Tenant.id == ApiKey.tenant_id)
    .where(ApiKey.key_prefix == bindparam("prefix"))
)


def tenant_for_api_key(uow: UnitOfWork, presented: str | None, now: datetime) -> uuid.UUID:
    """The tenant a presented key belongs to, or Unauthorized."""
    if not presented:
        raise Unauthorized(
            "An API key is required: send 'Authorization: Bearer va_live_...'.", code="missing_api_key"
        )
    parts = presented[len(KEY_SCHEME) :].split("_", 1) if presented.startswith(KEY_SCHEME) else []
    if len(parts) != 2:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    api_key = uow.session.execute(_KEY_AND_ITS_TENANT, {"prefix": parts[0]}).one_or_none()
    if (
        api_key is None
        or api_key.revoked_at is not None
        or api_key.tenant_deleted_at is not None
        or not hmac.compare_digest(api_key.key_hash, _digest(presented))
    ):
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        # Coarse on purpose: one write a minute per key, not one per request. Never waited for: while anyone
        # holds the row (a request writing it this instant, an operator's transaction) the write is skipped,
        # or every request of the key would hang on this bookkeeping, each holding a pooled connection.
        unlocked = (
            select(ApiKey.id)
            .where(ApiKey.id == api_key.id)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        uow.session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == unlocked,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
        )
    return api_key.tenant_id


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown of a key: never the key, which only its creator ever saw."""

    key_prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_api_keys(uow: UnitOfWork) -> list[ApiKeyInfo]:
    """The unit of work's tenant's keys, oldest first (row-level security keeps it to that tenant)."""
    rows = uow.session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_prefix))
    return [
        ApiKeyInfo(row.key_prefix, row.name, row.created_at, row.last_used_at, row.revoked_at) for row in rows
    ]


def key_prefix_of(key_or_prefix: str) -> str:
    """The prefix that finds a key's row, from the whole key (`va_live_<prefix>_<secret>`), from
    `va_live_<prefix>`, or from the prefix itself: an operator revoking a leaked key may have any of them."""
    bare = key_or_prefix.strip().removeprefix(KEY_SCHEME)
    return bare.split("_", 1)[0]


def revoke_api_key(uow: UnitOfWork, key_or_prefix: str, now: datetime) -> bool:
    """Revoke the unit of work's tenant's key; False when it has no such live key."""
    result = uow.session.execute(
        update(ApiKey)
        .where(ApiKey.key_prefix == key_prefix_of(key_or_prefix), ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return result.rowcount == 1
