"""Client contact details as they are stored: emails and phones, refused with a code when unusable."""

from __future__ import annotations

import pytest

from core.clients import ClientDetails, normalise, normalise_email, normalise_phone
from core.errors import InvalidRequest
from core.models import Tenant


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("o'brien@example.com", "o'brien@example.com"),
        (" Ana+Citas@Example.COM ", "ana+citas@example.com"),
        ("first.last@mail.example.co.uk", "first.last@mail.example.co.uk"),
        ("ana@bücher.example", "ana@xn--bcher-kva.example"),
    ],
)
def test_usable_emails_are_stored_lower_case(raw, stored):
    assert normalise_email(raw) == stored


@pytest.mark.parametrize(
    "raw",
    [
        "not-an-email",
        "a@b",
        "two@@example.com",
        "spa ce@example.com",
        "lucía@ejemplo.es",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@example..com",
        "a@-example.com",
        "a@example-.com",
        "a@example.123",
        "a@" + ".".join(["b" * 60] * 5) + ".com",  # over 254 characters
    ],
)
def test_unusable_emails_are_refused(raw):
    with pytest.raises(InvalidRequest) as refused:
        normalise_email(raw)
    assert (refused.value.code, refused.value.details["field"]) == ("invalid_email", "client.email")


def test_a_national_number_is_read_in_the_business_country():
    assert normalise_phone("612 345 678", "ES") == "+34612345678"
    assert normalise_phone("(212) 555-0123", "US") == "+12125550123"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        # Read as a keypad spells them, these would be +34612222333 and +34900235567.
        ("612-ABC-DEF", "digits only"),
        ("900 CALL ME", "digits only"),
        ("612-ＡＢＣ-ＤＥＦ", "digits only"),  # full-width
        ("+34 612 345 678 ext. 12", "digits only"),
        ("+34 612 345 678 x12", "digits only"),
        # Extensions without letters: phonenumbers would keep them aside and E.164 drops them.
        ("+1 (212) 555-0123 #123", "extension"),
        ("612 345 678 # 55", "extension"),
    ],
)
def test_letters_and_extensions_are_refused_not_rewritten(raw, says):
    with pytest.raises(InvalidRequest) as refused:
        normalise_phone(raw, "ES")
    assert (refused.value.code, refused.value.details["field"]) == ("invalid_phone", "client.phone")
    assert says in refused.value.message


@pytest.mark.parametrize(
    ("raw", "region", "stored"),
    [
        ("٦١٢٣٤٥٦٧٨", "ES", "+34612345678"),  # Arabic-Indic digits
        ("090ー1234ー5678", "JP", "+819012345678"),  # the long dash a Japanese keyboard types for "-"
        ("０９０ー１２３４ー５６７８", "JP", "+819012345678"),  # full-width
        ("tel:+34-612-345-678", "ES", "+34612345678"),  # a tel: link
        ("0034 612 345 678", "ES", "+34612345678"),
    ],
)
def test_what_people_type_for_a_number_is_read(raw, region, stored):
    assert normalise_phone(raw, region) == stored


@pytest.mark.parametrize(
    "name",
    [
        " ",
        "\u200b",  # zero-width space
        "\u2060 \ufeff",  # word joiner, byte-order mark
        "\u3164",  # Hangul filler: a letter that renders as nothing
        "\u115f\u1160",
        "\uffa0",
        "\u2800",  # Braille blank
        "\u034f",  # combining grapheme joiner
        "\ufe0f",  # a variation selector on its own
    ],
)
def test_a_first_name_that_shows_nothing_is_refused(name):
    with pytest.raises(InvalidRequest) as refused:
        normalise(ClientDetails(first_name=name, phone="612345678"), Tenant(country="ES"))
    assert refused.value.code == "invalid_name"


@pytest.mark.parametrize(
    "name",
    [
        "Ana",
        "Jose\u0301",  # a combining accent on a letter
        "\U0001e4d0\U0001e4d1",  # Nag Mundari: newer than Python 3.11's Unicode tables, still a name
        "李",
    ],
)
def test_a_first_name_that_shows_something_is_kept(name):
    stored = normalise(ClientDetails(first_name=name, phone="612345678"), Tenant(country="ES"))
    assert stored.first_name == name
