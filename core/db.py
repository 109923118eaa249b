"""Engine, sessions and the unit of work.

A UnitOfWork is one database transaction. It rolls back unless `commit()` is called, and runs the
callbacks registered with `after_commit()` (enqueueing, mostly) only once the commit has succeeded. A
reader (`read_only=True`, the API's GET requests) cannot write (PostgreSQL refuses it) and ends with a
COMMIT, which keeps the connection's prepared statements.

Who commits: the adapter that opened the unit of work (a route, a task), after its one core call. The
exception is the intake job's life cycle (`intake.submit`, `intake.run`, `intake.fail_unexpectedly`),
which commits itself: a job is enqueued only after its row is committed, and its `running` marker must be
visible before the booking runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import sqlalchemy.exc
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings
from core.errors import DomainError, NotFound

_engine: Engine | None = None
_session_factory: sessionmaker[Session] | None = None

T = TypeVar("T")

_CONTEXT_SETTINGS = (
    "SELECT set_config('app.tenant_id', :tenant, true), set_config('app.user_id', :user, true),"
    " set_config('app.system', :system, true)"
)
_SET_CONTEXT = text(_CONTEXT_SETTINGS)
# Going read-only is allowed at any point of a transaction (only going back is not), so it rides along.
_SET_READ_ONLY_CONTEXT = text(_CONTEXT_SETTINGS + ", set_config('transaction_read_only', 'on', true)")
# Session-level advisory locks outlive the transaction: `UnitOfWork.locked_meanwhile` releases them, and a
# connection that goes back to the pool still holding one (an error between lock and unlock) is cleared.
_LOCK_SESSION = text(
    "SELECT pg_advisory_lock(:namespace, hashtext(key)) FROM unnest(CAST(:keys AS text[])) AS key"
)
_UNLOCK_SESSION = "SELECT pg_advisory_unlock_all()"
HOLDS_SESSION_LOCKS = "holds_session_locks"


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    settings = get_settings()
    kwargs.setdefault("pool_pre_ping", True)
    # A burst waits for a pooled connection rather than opening more: PostgreSQL's connection slots
    # are shared by every API and worker process.
    kwargs.setdefault("pool_size", settings.db_pool_size)
    kwargs.setdefault("max_overflow", settings.db_max_overflow)
    kwargs.setdefault("pool_timeout", settings.db_pool_timeout_seconds)
    # A failed statement's message (logged, retried, shown in Flower) must not carry its parameters: they
    # are clients' names, phones and emails.
    kwargs.setdefault("hide_parameters", True)
    # A database host that drops packets must fail a request in seconds, not hang it; and no statement
    # of the application may run longer than a task is allowed to.
    options = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    if settings.db_client_check_interval_ms:
        # A worker process killed while its statement waits for a lock (the hard time limit, the OOM
        # killer, a deploy) leaves that statement running, with its transaction's locks, until the wait
        # ends: PostgreSQL notices a vanished client only when it next talks to it, unless it checks.
        options += f" -c client_connection_check_interval={settings.db_client_check_interval_ms}"
    if settings.db_idle_in_transaction_timeout_ms:
        # A worker node that stops answering between two statements of a booking (a paused VM, a network
        # partition, a host gone without resetting its connections) leaves its transaction idle with the job's
        # row, the allocation and the locks others wait for: the stylist's whole day, the business's count.
        # The server ends it; a live unit of work never waits that long between two statements.
        options += f" -c idle_in_transaction_session_timeout={settings.db_idle_in_transaction_timeout_ms}"
    kwargs.setdefault(
        "connect_args", {"connect_timeout": settings.db_connect_timeout_seconds, "options": options}
    )
    engine = create_engine(url or settings.database_url, **kwargs)
    event.listen(engine, "connect", _session_in_utc)
    event.listen(engine, "checkin", _release_session_locks)
    event.listen(engine, "rollback", _drop_if_a_statement_is_running)
    event.listen(engine, "rollback_savepoint", _drop_if_a_statement_is_running)
    event.listen(engine, "handle_error", _drop_connections_to_a_standby)
    if settings.is_production:
        # Before `SET ROLE`: a login that may not take the role (the tables' owner on PostgreSQL 16 or newer,
        # whose membership from revision 013 lacks SET) failed there first, with a ProgrammingError: a 500
        # in the API and a dropped message in the workers, instead of this check's refusal.
        event.listen(engine, "connect", _refuse_a_login_above_the_policies)
    if settings.db_app_role:
        act_as(engine, settings.db_app_role)
    return engine


def _drop_connections_to_a_standby(context: Any) -> None:
    """A write refused as read-only: the connection may have reached the old primary, now a standby, and
    would pass pool_pre_ping and refuse every write for good. Dropped as a lost connection is, with the rest of
    the pool, so that the retry connects anew and finds the new primary. (A reader's own refusal, a bug, drops
    the pool too: rare, and it costs only new connections.)"""
    if refused_as_read_only(context.sqlalchemy_exception):
        context.is_disconnect = True


def _drop_if_a_statement_is_running(connection: Connection, *savepoint: Any) -> None:
    """An exception from outside (a task's soft time limit) can stop a statement half way, while it waits for
    a lock: its connection still has that statement in progress and can neither roll back (psycopg: "another
    command is already in progress", raised in place of the exception that stopped it) nor go back to the
    pool (whose reset fails the same way and logs an ERROR). It is closed instead, before the rollback, which
    SQLAlchemy then skips; the server ends the statement and its transaction when it notices the client gone
    (`client_connection_check_interval`)."""
    if connection.invalidated:
        return
    driver_connection = connection.connection.driver_connection
    if driver_connection.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
        connection.invalidate()


# `RESET ROLE` takes a session back to its login, so the login decides what SQL run in the application's
# sessions could reach: nothing beyond the application role's rights only if it is neither a superuser, nor
# BYPASSRLS, nor the owner of the tables (an owner can switch the policies off).
_LOGIN_RIGHTS = """
SELECT session_user, r.rolsuper, r.rolbypassrls,
       EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tableowner = session_user)
FROM pg_roles r WHERE r.rolname = session_user
"""


def _refuse_a_login_above_the_policies(dbapi_connection: Any, connection_record: Any) -> None:
    """In production, a connection whose login could leave row-level security fails as the database being
    unavailable would (503 in the API, a retry in the workers), saying why: no job is failed for it."""
    login, superuser, bypasses, owns = _execute_outside_transaction(dbapi_connection, _LOGIN_RIGHTS)
    rights = [
        right
        for right, held in (
            ("is a superuser", superuser),
            ("bypasses RLS", bypasses),
            ("owns the tables", owns),
        )
        if held
    ]
    if rights:
        dbapi_connection.close()
        raise psycopg.OperationalError(
            f"the database login {login!r} {', '.join(rights)}: in production the API and workers must log in"
            f" as a role that is only a member of {get_settings().db_app_role!r} (docs/operations.md, section 5)"
        )


def act_as(engine: Engine, role: str) -> None:
    """Every new connection of the engine switches to `role` for its whole life.

    The owner of the tables (and any superuser) bypasses row-level security; the application role does
    not, so this is what makes the policies apply. Migrations use engines of their own and stay the owner.
    """
    statement = 'SET ROLE "{}"'.format(role.replace('"', '""'))

    @event.listens_for(engine, "connect")
    def _set_role(dbapi_connection: Any, connection_record: Any) -> None:
        # Outside any transaction, so that the pool's rollback on checkin cannot undo it.
        _execute_outside_transaction(dbapi_connection, statement)


def _session_in_utc(dbapi_connection: Any, connection_record: Any) -> None:
    """Every session in UTC, whatever the server's, the database's or the client's (PGTZ) default.

    psycopg hands timestamptz values back in the session's zone, and Python's arithmetic and comparisons
    of aware datetimes in a zone with DST are wall-clock ones: an hour before 03:30 on a spring-forward
    night is not 02:30 in UTC, and a time in a repeated autumn hour never equals one of another zone.
    Everything the core reads is in UTC, as DESIGN §4 says it works. (Run after connecting rather than as a
    startup option, which PGTZ would override.) Outside any transaction, so the pool's rollback keeps it.
    """
    _execute_outside_transaction(dbapi_connection, "SET TIME ZONE 'UTC'")


def _release_session_locks(dbapi_connection: Any, connection_record: Any) -> None:
    if dbapi_connection is None or not connection_record.info.pop(HOLDS_SESSION_LOCKS, False):
        return
    try:
        _execute_outside_transaction(dbapi_connection, _UNLOCK_SESSION)
    except Exception as error:
        # Closing the connection releases its locks too.
        connection_record.invalidate(error)


def _execute_outside_transaction(dbapi_connection: Any, statement: str) -> tuple[Any, ...] | None:
    """The statement's first row, if it returns any."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchone() if cursor.description else None
    finally:
        dbapi_connection.autocommit = autocommit


def refused_as_read_only(error: BaseException) -> bool:
    """A write the database refused because it is read-only (25006). Outside a reader (whose own read-only
    transaction refusing a write is a bug: see UnitOfWork.__exit__), the old primary during a failover: a
    passing outage, and the engine drops the connection (see _drop_connections_to_a_standby)."""
    return isinstance(getattr(error, "orig", None), psycopg.errors.ReadOnlySqlTransaction)


# The SQLSTATEs, by class or code, of the errors psycopg reports as OperationalError that a later try may not
# meet: a connection lost or refused (08; 28 while a restart or a credentials change is under way), a transaction
# rolled back by a deadlock or a serialization failure (40), resources running short (53), a lock or an object
# busy (55P03, 55006), a statement timeout, a cancel or a shutdown (57). The others (a program limit exceeded,
# a trigger or routine that broke its protocol, a misused savepoint) fail the same way each time they run.
_PASSING_SQLSTATES = ("08", "28", "40", "53", "55P03", "55006", "57")


def may_pass(error: sqlalchemy.exc.OperationalError) -> bool:
    """Whether trying again later may succeed: the database (or the way to it) is briefly unavailable. An
    error raised before any server answered (no SQLSTATE: the connection could not be made or was lost) or on a
    connection SQLAlchemy has since dropped may pass too."""
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(_PASSING_SQLSTATES)


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


def dispose_engine(*, close: bool = False) -> None:
    """Forget the process's engine; a forked worker calls this so it never shares a parent's sockets.

    `close=True` also closes its pooled connections, for a process that is done with them; a forked child
    must not close its parent's."""
    global _engine, _session_factory
    if _engine is not None:
        _engine.dispose(close=close)
    _engine = None
    _session_factory = None


def configure_session_factory(factory: sessionmaker[Session] | None) -> None:
    """Point every new UnitOfWork at `factory` (tests bind it to one connection)."""
    global _session_factory
    _session_factory = factory


class UnitOfWork:
    """One transaction in one context: a tenant's (row-level security shows only its rows), or with
    `system=True` every tenant's, for the few callers that must look across tenants before they know
    which one they serve (the job runner, the sweeper, the API-key lookup, the seed)."""

    def __init__(
        self,
        tenant_id: uuid.UUID | str | None = None,
        user_id: uuid.UUID | str | None = None,
        factory: sessionmaker[Session] | None = None,
        *,
        system: bool = False,
        read_only: bool = False,
    ):
        self._factory = factory
        self.tenant_id = uuid.UUID(str(tenant_id)) if tenant_id else None
        self.user_id = uuid.UUID(str(user_id)) if user_id else None
        self.system = system
        # A reader (an API GET): PostgreSQL refuses any write in it (25006), and it ends with a COMMIT.
        self.read_only = read_only
        self._after_commit: list[Callable[[], Any]] = []
        self.session: Session

    def __enter__(self) -> UnitOfWork:
        self.session = (self._factory or session_factory())()
        # The context is set as each transaction begins, in the same round trip as nothing else: a unit
        # of work that commits and goes on (the job runner) gets it again, one that ends pays nothing more.
        event.listen(self.session, "after_begin", self._apply_context)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, *_: Any) -> None:
        try:
            # A reader refused by the domain (404, 409, 403) wrote nothing either, and its transaction works.
            if self.read_only and (exc_type is None or issubclass(exc_type, DomainError)):
                # Nothing to keep, but psycopg forgets a connection's prepared statements on every ROLLBACK:
                # a reader that rolled back would have PostgreSQL parse and plan its statements on every
                # request (1.2 ms for the availability calendar's alone).
                self.session.commit()
            else:
                self.session.rollback()  # whatever was not committed is dropped
        finally:
            self.session.close()
        if self.read_only and error is not None and refused_as_read_only(error):
            # Refused by this reader's own read-only transaction, not by a standby in a failover: a bug,
            # which neither a retry (workers) nor a 503 (the API) would mend.
            raise RuntimeError("a write in a read-only unit of work") from error

    def _apply_context(self, session: Session, transaction: Any, connection: Connection) -> None:
        if transaction is not None and transaction.nested:
            return  # a savepoint is inside a transaction that has the settings already
        # Transaction-local settings, read by the row-level security policies and the audit trigger.
        # All three every time, empty ones too: nothing is inherited from an enclosing transaction or
        # from a session-level value left on a pooled connection.
        connection.execute(
            _SET_READ_ONLY_CONTEXT if self.read_only else _SET_CONTEXT,
            {
                "tenant": str(self.tenant_id) if self.tenant_id else "",
                "user": str(self.user_id) if self.user_id else "",
                "system": "on" if self.system else "off",
            },
        )

    def set_tenant(self, tenant_id: uuid.UUID | str) -> None:
        """Scope the rest of this unit of work to one tenant (a job learns its tenant from its row).

        System mode ends here: what follows sees and writes only this tenant's rows."""
        self.tenant_id = uuid.UUID(str(tenant_id))
        self.system = False
        if self.session.in_transaction():
            self._apply_context(self.session, None, self.session.connection())

    @contextmanager
    def locked_meanwhile(self, namespace: int, keys: list[str]) -> Iterator[None]:
        """Advisory locks on `keys` for the duration of the block, not until the commit.

        `keys` must be sorted, so that two holders never wait for each other in a cycle. Wrap a savepoint
        in it, not the other way round: the locks are released after a failed block's savepoint has been
        rolled back, in a transaction that still works.
        """
        if not keys:
            yield
            return
        connection = self.session.connection()
        connection.info[HOLDS_SESSION_LOCKS] = True
        connection.execute(_LOCK_SESSION, {"namespace": namespace, "keys": keys})
        try:
            yield
        finally:
            # A connection that died in the block (a restarted server, a terminated backend) took its locks
            # with it; touching it again would raise PendingRollbackError in place of the error that says
            # why it died, which the worker retries and PendingRollbackError it does not.
            if not connection.invalidated:
                connection.exec_driver_sql(_UNLOCK_SESSION)
                connection.info.pop(HOLDS_SESSION_LOCKS, None)

    def after_commit(self, callback: Callable[[], Any]) -> None:
        self._after_commit.append(callback)

    def commit(self) -> None:
        self.session.commit()
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def rollback(self) -> None:
        self.session.rollback()
        self._after_commit = []

    def get(self, model: type[T], ident: Any, *, code: str, what: str) -> T:
        """The row with this id in the current tenant, or NotFound (never another tenant's row)."""
        key = self.id_of(model, ident, code=code, what=what)
        return self.visible(model, ident, self.session.get(model, key), code=code, what=what)

    def id_of(self, model: type, ident: Any, *, code: str, what: str) -> uuid.UUID:
        """`ident` as a UUID, or NotFound as `get` raises it: a malformed id names no row."""
        try:
            return uuid.UUID(str(ident))
        except ValueError:
            raise NotFound(f"{what} {ident} does not exist", code=code) from None

    def visible(self, model: type[T], ident: Any, row: T | None, *, code: str, what: str) -> T:
        """`row`, read by the caller as the `model` with id `ident`, or NotFound when there is no such row
        in the current tenant (missing, another tenant's, deleted), as `get` decides."""
        row_tenant = getattr(row, "tenant_id", None)
        if row is None or (
            self.tenant_id is not None and row_tenant is not None and row_tenant != self.tenant_id
        ):
            raise NotFound(f"{what} {ident} does not exist", code=code)
        if getattr(row, "deleted_at", None) is not None:
            raise NotFound(f"{what} {ident} does not exist", code=code)
        return row
