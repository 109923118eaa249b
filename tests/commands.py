"""The `voiceappoint` command run as an operator runs it: a process of its own, from the project's root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_voiceappoint(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """`voiceappoint <args>` with these environment variables added to the test's own."""
    return subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
