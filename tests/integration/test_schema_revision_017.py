"""Revision 017: a tenant's hard delete is not blocked by its own audit trail, the application role
cannot write the trail, a tenant cannot enrol another tenant's user to read their row, and creating a
tenant needs system mode (docs/schema.md, "Revision 017")."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from core.db import UnitOfWork
from core.models import TenantUser, User
from tests import factories


def test_a_tenant_with_audited_rows_can_be_hard_deleted_once_its_audit_rows_are_removed(database_url):
    owner = create_engine(database_url)  # the owner/superuser, as an operator would do it
    try:
        with owner.connect() as connection, connection.begin() as transaction:
            tenant_id = connection.execute(
                text(
                    "INSERT INTO tenants (slug, name, business_type) VALUES (:slug, 'T', 'salon') RETURNING id"
                ),
                {"slug": f"rev017-{uuid.uuid4().hex[:8]}"},
            ).scalar_one()
            connection.execute(
                text("INSERT INTO services (tenant_id, name, duration_minutes) VALUES (:t, 'Cut', 30)"),
                {"t": tenant_id},
            )
            connection.execute(text("DELETE FROM audit_logs WHERE tenant_id = :t"), {"t": tenant_id})
            try:
                with connection.begin_nested():
                    connection.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": tenant_id})
            except DBAPIError as error:
                pytest.fail(f"tenant delete refused after removing its audit rows: {error.orig}")
            finally:
                transaction.rollback()
    finally:
        owner.dispose()


def test_the_application_role_cannot_write_the_audit_trail_itself(db):
    tenant = factories.make_tenant(db)
    someone = factories.make_user(db)
    with UnitOfWork(tenant_id=tenant.id) as uow:
        with pytest.raises(DBAPIError) as caught:
            uow.session.execute(
                text(
                    "INSERT INTO audit_logs (tenant_id, action, table_name, record_id, user_id, user_email)"
                    " VALUES (:t, 'DELETE', 'appointments', gen_random_uuid(), :u, :e)"
                ),
                {"t": tenant.id, "u": someone.id, "e": someone.email},
            )
        assert caught.value.orig.sqlstate == "42501"


def test_a_tenant_cannot_read_another_tenants_user_by_enrolling_them(db):
    a = factories.make_tenant(db)
    b = factories.make_tenant(db)
    b_owner = factories.make_user(db, password_hash="B-OWNER-SECRET-HASH")
    factories.make_tenant_user(db, b, b_owner)
    with UnitOfWork(tenant_id=a.id) as uow:
        assert uow.session.scalar(select(User.password_hash).where(User.id == b_owner.id)) is None
        uow.session.add(TenantUser(tenant_id=a.id, user_id=b_owner.id, role="member"))
        try:
            uow.session.flush()
        except DBAPIError:
            return  # refused: fine
        leaked = uow.session.scalar(select(User.password_hash).where(User.id == b_owner.id))
        assert leaked is None, f"tenant A read tenant B's user: password_hash={leaked!r}"


def test_creating_a_tenant_needs_system_mode(db):
    new_id = uuid.uuid4()
    with UnitOfWork(tenant_id=new_id) as uow:
        with pytest.raises(DBAPIError) as caught:
            uow.session.execute(
                text("INSERT INTO tenants (id, slug, name, business_type) VALUES (:id, :slug, 'X', 'salon')"),
                {"id": new_id, "slug": f"rev017-{new_id.hex[:8]}"},
            )
        assert caught.value.orig.sqlstate == "42501"


def test_a_membership_cannot_be_handed_to_another_user_and_a_removed_one_hides_the_user(db):
    tenant = factories.make_tenant(db)
    member = factories.make_user(db)
    stranger = factories.make_user(db, password_hash="STRANGER-HASH")
    membership = factories.make_tenant_user(db, tenant, member, role="member")
    with UnitOfWork(tenant_id=tenant.id) as uow:
        with pytest.raises(DBAPIError) as caught:
            uow.session.execute(
                text("UPDATE tenant_users SET user_id = :stranger WHERE id = :id"),
                {"stranger": stranger.id, "id": membership.id},
            )
        assert caught.value.orig.diag.constraint_name == "tenant_users_user_id_fixed"
    with UnitOfWork(tenant_id=tenant.id) as uow:
        assert uow.session.scalar(select(User.id).where(User.id == member.id)) == member.id
        uow.session.execute(
            text("UPDATE tenant_users SET deleted_at = now() WHERE id = :id"), {"id": membership.id}
        )
        assert uow.session.scalar(select(User.id).where(User.id == member.id)) is None


@pytest.mark.parametrize("flag", ["is_staff", "is_superuser", "is_active", "email_verified"])
def test_a_user_cannot_grant_themself_a_flag_but_may_change_their_name(db, flag):
    user = factories.make_user(db)
    with UnitOfWork(user_id=user.id) as uow:
        uow.session.execute(text("UPDATE users SET first_name = 'Renamed' WHERE id = :id"), {"id": user.id})
        with pytest.raises(DBAPIError) as caught:
            uow.session.execute(text(f"UPDATE users SET {flag} = NOT {flag} WHERE id = :id"), {"id": user.id})
        assert caught.value.orig.diag.constraint_name == "users_privileges_fixed"
