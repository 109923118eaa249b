"""Users, their sessions and login attempts (seed section 1), and per-tenant API keys (revision 011)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column, validates

from core.models.base import Audited, Base, SoftDeleted, created_at, flag, known_time_zone, uuid_pk


class User(Audited, SoftDeleted, Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(
            "email ~* '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}$'", name="users_email_format"
        ),
        CheckConstraint("phone IS NULL OR phone ~ '^\\+?[1-9]\\d{1,14}$'", name="users_phone_format"),
        Index(
            "idx_users_email_active",
            "email",
            postgresql_where=text("is_active = true AND deleted_at IS NULL"),
        ),
        Index(
            "idx_users_phone_active",
            "phone",
            postgresql_where=text("is_active = true AND deleted_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(20))
    avatar_url: Mapped[str | None] = mapped_column(Text)
    email_verified: Mapped[bool] = flag(False)
    phone_verified: Mapped[bool] = flag(False)
    is_active: Mapped[bool] = flag(True)
    is_staff: Mapped[bool] = flag(False)
    is_superuser: Mapped[bool] = flag(False)
    last_login: Mapped[datetime | None]
    password_changed_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    locale: Mapped[str] = mapped_column(String(10), server_default="es")
    timezone: Mapped[str] = mapped_column(String(50), server_default="Europe/Madrid")

    @validates("timezone")
    def _known_time_zone(self, _key: str, name: Any) -> Any:
        return known_time_zone(name)


class UserSession(Base):
    __tablename__ = "user_sessions"
    __table_args__ = (
        Index("idx_user_sessions_user_id", "user_id"),
        Index("idx_user_sessions_token_jti", "token_jti"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_jti: Mapped[str] = mapped_column(String(255), unique=True)
    device_info: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    ip_address: Mapped[str | None] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = created_at()
    revoked_at: Mapped[datetime | None]


class LoginAttempt(Base):
    __tablename__ = "login_attempts"
    __table_args__ = (
        # Not in the seed: "block an IP / an account after N failures" reads exactly these.
        Index("idx_login_attempts_email_time", "email", "attempted_at"),
        Index("idx_login_attempts_ip_time", "ip_address", "attempted_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(String(255))
    ip_address: Mapped[str] = mapped_column(INET)
    user_agent: Mapped[str | None] = mapped_column(Text)
    success: Mapped[bool]
    failure_reason: Mapped[str | None] = mapped_column(String(100))
    attempted_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class ApiKey(Base):
    """An upstream app's key: `key_prefix` finds the row, `key_hash` (sha256 hex of the whole key) proves it."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("idx_api_keys_tenant_id", "tenant_id"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    key_prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = created_at()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
