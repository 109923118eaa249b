"""Who may create and change tenants, memberships and users (revision 017, docs/schema.md): a tenant cannot
enrol another tenant's user to read their row, hand a membership to another user or create a tenant
(system mode only), a removed membership hides the user, and a user cannot grant themself a flag."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from core.db import UnitOfWork
from core.models import TenantUser, User
from tests import factories


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


def test_a_tenant_cannot_hand_its_membership_to_another_tenant(db):
    tenant, other = factories.make_tenant(db), factories.make_tenant(db)
    membership = factories.make_tenant_user(db, tenant, factories.make_user(db), role="member")
    with UnitOfWork(tenant_id=tenant.id) as uow:
        with pytest.raises(DBAPIError) as caught:
            # No WHERE clause: without one, only the update policy's WITH CHECK looks at the new row (a
            # clause that reads the row would bring in the read policy too).
            uow.session.execute(text("UPDATE tenant_users SET tenant_id = :other"), {"other": other.id})
        assert caught.value.orig.sqlstate == "42501"
    assert db.scalar(select(TenantUser.tenant_id).where(TenantUser.id == membership.id)) == tenant.id


def test_a_tenant_cannot_turn_its_own_row_into_another_tenants(db):
    # tenants' update policy checks the new row as well (WITH CHECK, 017): the row stays the context's.
    tenant = factories.make_tenant(db)
    with UnitOfWork(tenant_id=tenant.id) as uow:
        with pytest.raises(DBAPIError) as caught:
            uow.session.execute(
                text("UPDATE tenants SET id = :new"), {"new": uuid.uuid4()}
            )  # no WHERE: see above
        assert caught.value.orig.sqlstate == "42501"


def test_outside_system_mode_a_membership_keeps_its_user_even_for_a_connection_that_set_nothing(database_url):
    # "system mode excepted" means app.system = 'on': an owner's connection that never set it (an operator's
    # psql) bypasses the policies, and the trigger is then what refuses (NULL is not 'on').
    owner = create_engine(database_url)
    try:
        with owner.connect() as connection, connection.begin() as transaction:
            assert connection.execute(text("SELECT current_setting('app.system', true)")).scalar() is None
            tenant_id = connection.execute(
                text(
                    "INSERT INTO tenants (slug, name, business_type) VALUES (:slug, 'T', 'salon') RETURNING id"
                ),
                {"slug": f"keep-user-{uuid.uuid4().hex[:8]}"},
            ).scalar_one()
            first, second = (
                connection.execute(
                    text(
                        "INSERT INTO users (email, password_hash, first_name, last_name) VALUES (:e, 'x', 'U', 'V') RETURNING id"
                    ),
                    {"e": f"{uuid.uuid4().hex[:12]}@example.com"},
                ).scalar_one()
                for _ in range(2)
            )
            membership = connection.execute(
                text("INSERT INTO tenant_users (tenant_id, user_id) VALUES (:t, :u) RETURNING id"),
                {"t": tenant_id, "u": first},
            ).scalar_one()
            try:
                with pytest.raises(DBAPIError) as caught, connection.begin_nested():
                    connection.execute(
                        text("UPDATE tenant_users SET user_id = :u WHERE id = :id"),
                        {"u": second, "id": membership},
                    )
                assert caught.value.orig.diag.constraint_name == "tenant_users_user_id_fixed"
            finally:
                transaction.rollback()
    finally:
        owner.dispose()
