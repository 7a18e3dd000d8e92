"""What is wrong with a config, said so a person can find it: file, line, key path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the YAML a value was written, so problems found later (in the files a path
    names) still point at the line the user has to edit."""

    line: int | None
    key_path: str


# The key that names a file: what the file is checked as.
Role = Literal["certificate", "key", "ca", "crl", "keys"]  # keys: session ticket keys

# Each file the config names, in each role, with the place that named it first.
Locations = Mapping[tuple[Path, Role], Location]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem. ``line`` is 1-based; None when the problem has no place in the file (the
    file itself is unreadable or too large)."""

    file: Path
    line: int | None
    key_path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        key = f" {self.key_path}:" if self.key_path else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}:{key} {prefix}{self.message}"


def sort_problems(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    """Problems in file order, each reported once (a file named twice is checked twice)."""
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.line is None, p.line or 0))


class ConfigError(Exception):
    """The config cannot be used. ``problems`` holds every error found (and any warnings),
    sorted by line, so one run of ``mtlsproxy check`` shows everything to fix."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(sort_problems(problems))
        super().__init__("\n".join(str(p) for p in self.problems))
