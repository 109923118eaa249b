"""Every install takes the versions in ops/constraints.txt, so a dependency's new release never changes what
a test run or a deployment gets by itself. These tests catch a dependency that is not pinned there."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).resolve().parents[2] / "ops" / "constraints.txt"


def pinned_versions(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def installed_closure(project: str, extras: set[str]) -> dict[str, str]:
    """Each distribution the project needs (with `extras`), directly or not, with its installed version."""
    found: dict[str, str] = {}
    pending = [(project, extras)]
    while pending:
        name, wanted_extras = pending.pop()
        distribution = metadata.distribution(name)
        for requirement_text in distribution.requires or []:
            requirement = Requirement(requirement_text)
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": extra}) for extra in wanted_extras | {""}):
                continue
            key = canonicalize_name(requirement.name)
            if key not in found:
                found[key] = metadata.version(requirement.name)
                pending.append((requirement.name, set(requirement.extras)))
            elif requirement.extras:
                pending.append((requirement.name, set(requirement.extras)))
    return found


def test_every_dependency_is_pinned_at_the_installed_version():
    pins = pinned_versions(CONSTRAINTS.read_text())
    needed = installed_closure("voiceappoint", {"dev"})

    assert "celery" in needed and "pytest" in needed  # the walk reached both the main and the dev needs
    unpinned = sorted(name for name in needed if name not in pins)
    assert not unpinned, f"not in ops/constraints.txt (run ops/voiceappoint refresh-constraints): {unpinned}"
    different = {name: (version, pins[name]) for name, version in needed.items() if pins[name] != version}
    assert not different, (
        f"installed version differs from ops/constraints.txt (installed, pinned): {different}"
    )


def test_pins_are_read_by_name_and_version():
    assert pinned_versions("# header\nFoo_Bar==1.2.3\n\nredis==5.3.1  # note\n") == {
        "foo-bar": "1.2.3",
        "redis": "5.3.1",
    }
