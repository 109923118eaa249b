"""Engine, sessions and the unit of work.

A UnitOfWork is one database transaction. It rolls back unless `commit()` is called, and runs the
callbacks registered with `after_commit()` (enqueueing, mostly) only once the commit has succeeded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings
from core.errors import NotFound

_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None

T = TypeVar("T")


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    settings = get_settings()
    kwargs.setdefault("pool_pre_ping", True)
    # A burst waits for a pooled connection rather than opening more: PostgreSQL's connection slots
    # are shared by every API and worker process.
    kwargs.setdefault("pool_size", settings.db_pool_size)
    kwargs.setdefault("max_overflow", settings.db_max_overflow)
    kwargs.setdefault("pool_timeout", settings.db_pool_timeout_seconds)
    return create_engine(url or settings.database_url, **kwargs)


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = make_engine()
    return _engine


def session_factory() -> sessionmaker[Session]:
    global _session_factory
    if _session_factory is None:
        _session_factory = sessionmaker(get_engine(), expire_on_commit=False)
    return _session_factory


def dispose_engine() -> None:
    """Forget the process's engine; a forked worker calls this so it never shares a parent's sockets."""
    global _engine, _session_factory
    if _engine is not None:
        _engine.dispose(close=False)
    _engine = None
    _session_factory = None


def configure_session_factory(factory: sessionmaker[Session] | None) -> None:
    """Point every new UnitOfWork at `factory` (tests bind it to one connection)."""
    global _session_factory
    _session_factory = factory


class UnitOfWork:
    def __init__(
        self,
        tenant_id: uuid.UUID | str | None = None,
        user_id: uuid.UUID | str | None = None,
        factory: sessionmaker[Session] | None = None,
    ):
        self._factory = factory
        self.tenant_id = uuid.UUID(str(tenant_id)) if tenant_id else None
        self.user_id = uuid.UUID(str(user_id)) if user_id else None
        self._after_commit: list[Callable[[], Any]] = []
        self.session: Session

    def __enter__(self) -> UnitOfWork:
        self.session = (self._factory or session_factory())()
        self._apply_context()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.session.rollback()  # whatever was not committed is dropped
        finally:
            self.session.close()

    def _apply_context(self) -> None:
        # Transaction-local settings: read by row-level security and the audit trigger.
        if self.tenant_id is not None:
            self.session.execute(
                text("SELECT set_config('app.tenant_id', :v, true)"), {"v": str(self.tenant_id)}
            )
        if self.user_id is not None:
            self.session.execute(text("SELECT set_config('app.user_id', :v, true)"), {"v": str(self.user_id)})

    def set_tenant(self, tenant_id: uuid.UUID | str) -> None:
        """Scope the rest of this transaction to one tenant (a job learns its tenant from its row)."""
        self.tenant_id = uuid.UUID(str(tenant_id))
        self._apply_context()

    def after_commit(self, callback: Callable[[], Any]) -> None:
        self._after_commit.append(callback)

    def commit(self) -> None:
        self.session.commit()
        self._apply_context()  # the settings were transaction-local; the next transaction needs them too
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def rollback(self) -> None:
        self.session.rollback()
        self._after_commit = []
        self._apply_context()

    def get(self, model: type[T], ident: Any, *, code: str = "not_found", what: str | None = None) -> T:
        """The row with this id in the current tenant, or NotFound (never another tenant's row)."""
        try:
            key = uuid.UUID(str(ident))
        except ValueError:
            raise NotFound(f"{what or model.__name__} {ident} does not exist", code=code) from None
        row = self.session.get(model, key)
        row_tenant = getattr(row, "tenant_id", None)
        if row is None or (
            self.tenant_id is not None and row_tenant is not None and row_tenant != self.tenant_id
        ):
            raise NotFound(f"{what or model.__name__} {ident} does not exist", code=code)
        if getattr(row, "deleted_at", None) is not None:
            raise NotFound(f"{what or model.__name__} {ident} does not exist", code=code)
        return row
