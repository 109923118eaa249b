"""Client contact details as they are stored: emails and phones, refused with a code when unusable."""

from __future__ import annotations

import pytest

from core.clients import normalise_email, normalise_phone
from core.errors import InvalidRequest


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("o'brien@example.com", "o'brien@example.com"),
        (" Ana+Citas@Example.COM ", "ana+citas@example.com"),
        ("first.last@mail.example.co.uk", "first.last@mail.example.co.uk"),
    ],
)
def test_usable_emails_are_stored_lower_case(raw, stored):
    assert normalise_email(raw) == stored


@pytest.mark.parametrize(
    "raw", ["not-an-email", "a@b", "two@@example.com", "spa ce@example.com", "lucía@ejemplo.es"]
)
def test_unusable_emails_are_refused(raw):
    with pytest.raises(InvalidRequest) as refused:
        normalise_email(raw)
    assert (refused.value.code, refused.value.details["field"]) == ("invalid_email", "client.email")


def test_a_national_number_is_read_in_the_business_country():
    assert normalise_phone("612 345 678", "ES") == "+34612345678"
    assert normalise_phone("(212) 555-0123", "US") == "+12125550123"
