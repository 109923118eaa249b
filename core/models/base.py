"""Declarative base and the column helpers every model module uses.

The naming convention reproduces PostgreSQL's own default names (users_pkey, users_email_key,
tenant_users_tenant_id_fkey, appointments_tenant_id_client_id_fkey), so a constraint has the same name
whether a migration named it explicitly or let PostgreSQL pick. Check and exclusion constraints are
always named explicitly.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    Date,
    DateTime,
    FetchedValue,
    ForeignKey,
    ForeignKeyConstraint,
    MetaData,
    Numeric,
    String,
    Time,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.errors import InvalidRequest

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        uuid.UUID: Uuid(),
        datetime: DateTime(timezone=True),
        date: Date(),
        time: Time(),
        Decimal: Numeric(10, 2),
        str: String(),
    }


def uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))


def created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def updated_at() -> Mapped[datetime]:
    # Kept current by the set_updated_at / update_updated_at_column triggers (revision 010); FetchedValue
    # makes an object read the trigger's value again after its UPDATE instead of keeping the old one.
    return mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), server_onupdate=FetchedValue()
    )


def version() -> Mapped[int]:
    # Counted up by update_updated_at_column (revision 010) on every UPDATE, like updated_at.
    return mapped_column(nullable=False, server_default=text("1"), server_onupdate=FetchedValue())


def known_time_zone(name: Any) -> Any:
    """`name` if Python's zoneinfo knows it by exactly that name, which the core needs to read a
    tenant's or user's local times (the database accepts any spelling PostgreSQL can convert with).
    A SQL expression is left to the database."""
    if not isinstance(name, str):
        return name
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of zones, "Europe"
        raise InvalidRequest(
            f"{name!r} is not a time zone name; use an IANA name such as Europe/Madrid",
            code="unknown_time_zone",
        ) from None
    return name


def flag(default: bool) -> Mapped[bool]:
    return mapped_column(nullable=False, server_default=text("true" if default else "false"))


def jsonb_object(default: str = "'{}'::jsonb", *, name: str | None = None) -> Mapped[Any]:
    """A NOT NULL JSONB column with a server default (the seed's `JSONB DEFAULT '{}'`)."""
    if name is None:
        return mapped_column(JSONB, nullable=False, server_default=text(default))
    return mapped_column(name, JSONB, nullable=False, server_default=text(default))


class Audited:
    """The seed's audit fields: who created and last changed a row, and when (updated_at and version
    are kept by the update_updated_at_column trigger, revision 010)."""

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    version: Mapped[int] = version()


class SoftDeleted:
    """A row that is marked deleted rather than removed, so its history keeps its references."""

    deleted_at: Mapped[datetime | None]
    deleted_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


def same_tenant(column: str, parent: str, *, ondelete: str | None = None) -> ForeignKeyConstraint:
    """`(tenant_id, column) REFERENCES parent (tenant_id, id)` (revision 015).

    A foreign-key check bypasses row-level security, so a single-column reference would take another
    tenant's id. With tenant_id in the key, the parent must belong to the row's own tenant. The parent
    declares `UniqueConstraint("tenant_id", "id")`. A NULL column (MATCH SIMPLE) references nothing.
    An ON DELETE SET NULL must name the column, `"SET NULL (column)"`, or it would null tenant_id too.
    """
    return ForeignKeyConstraint(
        ["tenant_id", column], [f"{parent}.tenant_id", f"{parent}.id"], ondelete=ondelete
    )
