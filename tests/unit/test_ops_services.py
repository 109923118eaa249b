"""URL checks of ops.services that need no server."""

import pytest

from ops.services import ServiceError, parse_postgres_url


@pytest.mark.parametrize(
    "url",
    [
        "postgres://postgres@127.0.0.1:5432/voiceappoint",
        "postgresql://postgres@127.0.0.1:5432/voiceappoint",
        "postgresql+psycopg://postgres@127.0.0.1:5432/voiceappoint",
    ],
)
def test_postgres_urls_are_read_with_the_psycopg_driver(url):
    parsed = parse_postgres_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.host, parsed.port, parsed.database) == ("127.0.0.1", 5432, "voiceappoint")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://postgres@127.0.0.1/voiceappoint", "driver 'asyncpg'"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432", "names no database"),
        ("postgresql+psycopg://postgres@127.0.0.1:port/voiceappoint", "not a valid URL"),
    ],
)
def test_unusable_postgres_urls_are_refused(url, expected):
    with pytest.raises(ServiceError, match=expected):
        parse_postgres_url(url)


def test_the_password_never_appears_in_the_message():
    with pytest.raises(ServiceError) as raised:
        parse_postgres_url("mysql://root:s3cret@127.0.0.1/voiceappoint")
    assert "s3cret" not in str(raised.value)


def test_service_errors_are_one_line():
    assert str(ServiceError("first\n  second\tthird")) == "first second third"
