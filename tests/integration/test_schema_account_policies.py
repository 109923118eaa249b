"""Who may create and change tenants, memberships and users (revision 017, docs/schema.md): a tenant cannot
enrol another tenant's user to read their row, hand a membership to another user or create a tenant
(system mode only), a removed membership hides the user, and a user cannot grant themself a flag."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select, text
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
