"""The root handler `core.logging.configure` installs."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from core import logging as app_logging


@pytest.fixture
def root_handlers():
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_records_go_to_the_stderr_of_the_moment_never_to_a_closed_one(root_handlers, monkeypatch, capsys):
    app_logging.configure("INFO", json=False)
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    logging.getLogger("test").info("while swapped")
    assert "while swapped" in swapped.getvalue()
    swapped.close()  # as a test runner closes what it captured with
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("test").info("after the swap")  # an exit handler's record
    assert "after the swap" in later.getvalue() and "Logging error" not in later.getvalue()
