"""`voiceappoint apikey create | list | revoke`, run as an operator runs them, on the test database."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.auth import tenant_for_api_key
from core.clock import utcnow
from core.db import UnitOfWork
from core.errors import Unauthorized
from core.models import ApiKey
from tests.commands import run_voiceappoint
from tests.factories import make_tenant


def voiceappoint(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return run_voiceappoint(*args, timeout=120, DATABASE_URL=database_url)


def test_an_operator_lists_and_revokes_a_leaked_key(database_url, committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        tenant = make_tenant(session)
        session.commit()
    created = voiceappoint(
        database_url, "apikey", "create", "--tenant", tenant.slug, "--name", "booking widget"
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    # va_live_<prefix>: the secret part (which may hold "_" too) is never shown again
    shown = "va_live_" + key.removeprefix("va_live_").split("_", 1)[0]

    # Only its digest is stored, and the key printed authenticates as the tenant.
    with Session(committed_engine) as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).one()
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in stored.key_hash
    with UnitOfWork(system=True) as uow:
        assert tenant_for_api_key(uow, key, utcnow()) == tenant.id

    listed = voiceappoint(database_url, "apikey", "list", "--tenant", tenant.slug)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert line.startswith(f"{shown}  booking widget  (created ") and "REVOKED" not in line
    assert re.search(r"\(created \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC\)", line), line  # which clock, said
    assert key not in listed.stdout

    revoked = voiceappoint(
        database_url, "apikey", "revoke", "--tenant", tenant.slug, key
    )  # the leaked key itself
    assert revoked.returncode == 0, revoked.stderr
    with UnitOfWork(system=True) as uow, pytest.raises(Unauthorized):
        tenant_for_api_key(uow, key, utcnow())
    assert "REVOKED" in voiceappoint(database_url, "apikey", "list", "--tenant", tenant.slug).stdout

    again = voiceappoint(database_url, "apikey", "revoke", "--tenant", tenant.slug, shown)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"voiceappoint: error: '{tenant.slug}' has no live key {shown}; see `voiceappoint apikey list`"
    ]


def test_a_key_whose_row_someone_holds_still_authenticates_at_once(committed_engine):
    # Each key's first request of a minute writes its last use. While anyone held the row (an operator's open
    # transaction, a migration), every request of that key waited for it, holding a pooled connection, and
    # ended as a 503 at the statement timeout; the other businesses then waited for a connection.
    from sqlalchemy import text

    from core.auth import create_api_key

    with Session(committed_engine, expire_on_commit=False) as session:
        tenant = make_tenant(session)
        session.commit()
    with UnitOfWork(system=True) as uow:
        key = create_api_key(uow, tenant.id, "widget")
        uow.commit()
    with committed_engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT id FROM api_keys WHERE tenant_id = :t FOR UPDATE"), {"t": tenant.id})
        with UnitOfWork(system=True) as uow:
            uow.session.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait fails the test in 2 s
            assert tenant_for_api_key(uow, key, utcnow()) == tenant.id
            uow.commit()
    with Session(committed_engine) as session:
        assert session.scalars(select(ApiKey.last_used_at).where(ApiKey.tenant_id == tenant.id)).one() is None
    # Once the row is free, the next request records the use.
    with UnitOfWork(system=True) as uow:
        tenant_for_api_key(uow, key, utcnow())
        uow.commit()
    with Session(committed_engine) as session:
        assert (
            session.scalars(select(ApiKey.last_used_at).where(ApiKey.tenant_id == tenant.id)).one()
            is not None
        )


def test_a_new_key_is_256_random_bits_behind_a_prefix_that_finds_one_row():
    # core.auth: "Keys carry 256 bits of randomness, so a fast hash is enough"; the prefix (unique in
    # api_keys) must be long enough that two keys of a busy deployment never draw the same one.
    import re
    import uuid

    from core.auth import new_api_key

    prefixes = set()
    for _ in range(200):
        row, key = new_api_key(uuid.uuid4(), "widget")
        prefix, secret = key.removeprefix("va_live_").split("_", 1)
        assert key.startswith("va_live_") and row.key_prefix == prefix
        assert re.fullmatch(r"[0-9a-f]{12,16}", prefix), prefix  # 48 bits or more; the column holds 16
        assert len(secret) >= 43, secret  # 32 random bytes, base64url
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        prefixes.add(prefix)
    assert len(prefixes) == 200
