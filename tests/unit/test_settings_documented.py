"""Every setting an operator can give is in the README's Configuration table and in .env.example."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings

REPO = Path(__file__).resolve().parents[2]


def _variable_names(name: str) -> list[str]:
    alias = Settings.model_fields[name].validation_alias
    choices = [choice for choice in getattr(alias, "choices", ()) if isinstance(choice, str)]
    return [choice.upper() for choice in choices] or [f"VOICEAPPOINT_{name.upper()}"]


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document):
    text = (REPO / document).read_text()
    missing = [
        names[0]
        for names in (_variable_names(name) for name in Settings.model_fields)
        if not any(variable in text for variable in names)
    ]
    assert missing == []
