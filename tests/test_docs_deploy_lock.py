"""requirements.lock, the locked dependency set the Dockerfile installs with `--constraint`:
it pins every runtime dependency of pyproject.toml (and the build backend) with `==`, at a
version the project accepts, and it is closed: every dependency of a locked package is
locked too. Its header says how to refresh it, for the Python the image runs."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
DOCKERFILE = ROOT / "Dockerfile"

# The image's Python (from its base image tag), on Linux and CPython: markers are evaluated
# for that, whatever runs the tests.
IMAGE_PYTHON = re.findall(r"^FROM python:(3\.\d+\.\d+)-", DOCKERFILE.read_text("utf-8"), re.M)[0]
IMAGE_ENVIRONMENT = {
    **default_environment(),
    "python_version": IMAGE_PYTHON.rsplit(".", 1)[0],
    "python_full_version": IMAGE_PYTHON,
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
}


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def lock_entries(text: str) -> dict[str, Requirement]:
    """Name -> requirement of each line that is not a comment or a pip option."""
    entries = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in entries, f"{name} is locked twice"
        entries[name] = requirement
    return entries


def pinned_version(requirement: Requirement) -> str:
    """The version of an exact `==` pin; anything else fails."""
    (specifier,) = requirement.specifier
    assert specifier.operator == "==" and "*" not in specifier.version, requirement
    return specifier.version


def uncovered(required: list[str], entries: dict[str, Requirement]) -> list[str]:
    """The requirements in ``required`` that the lock does not pin, or pins at a version the
    requirement does not accept (markers false for the image are skipped)."""
    missing = []
    for text in required:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        entry = entries.get(canonicalize_name(requirement.name))
        if entry is None or not requirement.specifier.contains(pinned_version(entry)):
            missing.append(text)
    return missing


def test_every_runtime_dependency_is_pinned_at_an_accepted_version() -> None:
    entries = lock_entries(LOCK.read_text(encoding="utf-8"))
    runtime = project()["project"]["dependencies"]
    assert len(runtime) >= 5
    assert uncovered(runtime, entries) == []
    for entry in entries.values():
        pinned_version(entry)
    # The build backend the image builds the wheel with is locked as well.
    assert uncovered(project()["build-system"]["requires"], entries) == []
    # The check itself: a missing pin, a loose one and an excluded version are all caught.
    assert uncovered(["pyyaml>=6"], lock_entries("")) == ["pyyaml>=6"]
    assert uncovered(["pyyaml>=6"], lock_entries("pyyaml==5.4.1\n")) == ["pyyaml>=6"]
    with pytest.raises(AssertionError):
        uncovered(["pyyaml>=6"], lock_entries("pyyaml>=6.0\n"))


def test_the_lock_keeps_the_platform_markers_of_pyproject() -> None:
    entries = lock_entries(LOCK.read_text(encoding="utf-8"))
    for text in project()["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None:
            entry = entries[canonicalize_name(requirement.name)]
            assert str(entry.marker) == str(requirement.marker), entry


def test_the_lock_is_closed_under_dependencies() -> None:
    """Every dependency of a locked package (its metadata as installed here: the test
    environment installs the runtime dependencies) is locked too, so `--constraint` leaves
    pip nothing to choose."""
    entries = lock_entries(LOCK.read_text(encoding="utf-8"))
    checked = 0
    for name, entry in entries.items():
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # the build backend, for one, need not be installed
        checked += 1
        needed = []
        for text in requires:
            requirement = Requirement(text)
            extras = entry.extras or {""}
            marker = requirement.marker
            if marker and not any(
                marker.evaluate({**IMAGE_ENVIRONMENT, "extra": extra}) for extra in extras
            ):
                continue
            needed.append(requirement.name)
        missing = {n for n in needed if canonicalize_name(n) not in entries}
        assert not missing, f"{name} needs {missing}, which the lock does not pin"
    assert checked >= 5  # cryptography, cffi, pyyaml, prometheus-client, httptools...


def test_the_lock_says_how_to_refresh_it_for_the_images_python() -> None:
    text = LOCK.read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    assert "piptools compile" in header and "--output-file=requirements.lock" in header
    assert "--all-build-deps" in header  # the build backend is locked too
    (built_with,) = re.findall(r"autogenerated by pip-compile with Python (3\.\d+)", header)
    images = re.findall(r"^FROM python:(3\.\d+)\.\d+-", DOCKERFILE.read_text("utf-8"), re.M)
    assert images and set(images) == {built_with}
    readme = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    assert "piptools compile" in readme and "requirements.lock" in readme
