# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""balenaOS version numbers: parsing and ordering.

Forms accepted (facts sheet §2.1, §3): ``2.88.4``, ``v2.88.4``, ``2.113.0+rev1``, legacy
``2.88.4-rev1`` (same as ``+rev1``), ``2.0.0.rev1``, variant markers ``.dev``/``.prod`` (also
inside the build or prerelease part: ``2.88.4+rev1.dev``), prereleases ``2.0.0-beta12`` and
ESR ``2024.1.0``.

Ordering is semver with the revision as a fourth component
(``2.113.0 < 2.113.0+rev1 < 2.113.1``); the variant and build markers other than ``revN`` do
not take part in ordering or equality. The update method and its refusals follow balena's own
semantics instead (``balena_semver``, ``method``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Union

VersionLike = Union["BalenaVersion", str]

#: the longest version text parsed (node-semver's limit too); a longer one is refused at once, so a
#: device or a catalog that sends a huge VERSION cannot make parsing slow
MAX_LENGTH = 256
_NUMBER_RE = re.compile(r"0|[1-9][0-9]*")
_IDENT_RE = re.compile(r"[0-9A-Za-z-]+")
_REV_RE = re.compile(r"rev(\d+)")
_VARIANTS = ("dev", "prod")


def _prerelease_key(prerelease: tuple[int | str, ...]) -> tuple[tuple[int, int, str], ...]:
    """Semver precedence of prerelease identifiers: numeric < alphanumeric, numbers by value."""
    return tuple((0, item, "") if isinstance(item, int) else (1, 0, item) for item in prerelease)


def _identifiers(text: str) -> list[str] | None:
    """``a.b-c.d`` as its identifiers; None when one is empty or holds other characters."""
    idents = text.split(".")
    return idents if all(_IDENT_RE.fullmatch(ident) for ident in idents) else None


def _split(text: str) -> tuple[list[int], list[str], list[str], list[str]] | None:
    """``[v]MAJOR.MINOR.PATCH[-PRE][+BUILD]`` or ``[v]MAJOR.MINOR.PATCH[.X...]``: (numbers, prerelease,
    build and dot-suffix identifiers), None when ``text`` is no version.

    Linear by construction: one pass of str.split/partition and a fullmatch of a single character
    class per piece (no pattern whose parts can match the same text two ways, as the regular
    expression it replaces had: a 120 KB VERSION took minutes), and nothing longer than
    MAX_LENGTH is looked at.
    """
    if len(text) > MAX_LENGTH:
        return None
    rest = text[1:] if text.startswith("v") else text
    fields = rest.split(".", 3)
    if len(fields) < 3:
        return None
    major, minor, last = fields[0], fields[1], ".".join(fields[2:])
    end = len(last)
    for sep in "-+.":
        if sep in last:
            end = min(end, last.index(sep))
    patch, tail = last[:end], last[end:]
    if not all(_NUMBER_RE.fullmatch(n) for n in (major, minor, patch)):
        return None
    pre: list[str] | None = []
    build: list[str] | None = []
    dots: list[str] | None = []
    if tail.startswith("-"):
        pre_text, plus, build_text = tail[1:].partition("+")
        pre = _identifiers(pre_text)
        build = _identifiers(build_text) if plus else []
    elif tail.startswith("+"):
        build = _identifiers(tail[1:])
    elif tail:
        dots = _identifiers(tail[1:])
    if pre is None or build is None or dots is None:
        return None
    return [int(major), int(minor), int(patch)], pre, build, dots


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class BalenaVersion:
    """One parsed balenaOS version. Compare, sort and hash by :attr:`sort_key`."""

    major: int
    minor: int
    patch: int
    rev: int = 0
    prerelease: tuple[int | str, ...] = ()
    variant: str | None = None
    raw: str = ""

    @classmethod
    def parse(cls, text: VersionLike) -> BalenaVersion:
        """Parse ``text``; raise ``ValueError("invalid balenaOS version 'x': <why>")``."""
        if isinstance(text, BalenaVersion):
            return text
        if not isinstance(text, str):
            raise ValueError(f"invalid balenaOS version {text!r}: expected a string, got {type(text).__name__}")
        parts = _split(text.strip())
        if parts is None:
            if len(text.strip()) > MAX_LENGTH:
                raise ValueError(f"invalid balenaOS version {text[:40]!r}... ({len(text)} characters): longer than {MAX_LENGTH} characters")
            raise ValueError(f"invalid balenaOS version {text!r}: expected MAJOR.MINOR.PATCH[+revN][.dev|.prod]")
        numbers, pre, build, dots = parts
        rev: int | None = None
        variant: str | None = None
        prerelease: list[int | str] = []
        sections = (("pre", pre), ("build", build), ("dots", dots))
        for section, identifiers in sections:
            for ident in filter(None, identifiers):
                rev_match = _REV_RE.fullmatch(ident)
                if ident in _VARIANTS:
                    if variant is not None and variant != ident:
                        raise ValueError(f"invalid balenaOS version {text!r}: both dev and prod markers")
                    variant = ident
                elif rev_match is not None:
                    if rev is not None:
                        raise ValueError(f"invalid balenaOS version {text!r}: more than one revision marker")
                    rev = int(rev_match.group(1))
                elif section == "pre":
                    prerelease.append(int(ident) if ident.isdigit() else ident)
                elif section == "dots":
                    raise ValueError(f"invalid balenaOS version {text!r}: unexpected suffix '.{ident}'")
                # other build metadata (+foo) is ignored, as semver says
        return cls(
            major=numbers[0],
            minor=numbers[1],
            patch=numbers[2],
            rev=rev or 0,
            prerelease=tuple(prerelease),
            variant=variant,
            raw=text,
        )

    @property
    def sort_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...], int]:
        """Key used for ordering, equality and hashing (variant and build markers excluded)."""
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, _prerelease_key(self.prerelease), self.rev)

    @property
    def base(self) -> BalenaVersion:
        """The same version without variant marker (for messages and lookups)."""
        return BalenaVersion(self.major, self.minor, self.patch, self.rev, self.prerelease, None, self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BalenaVersion):
            return NotImplemented
        return self.sort_key == other.sort_key

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, BalenaVersion):
            return NotImplemented
        return self.sort_key < other.sort_key

    def __hash__(self) -> int:
        return hash(self.sort_key)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(item) for item in self.prerelease)
        if self.rev:
            text += f"+rev{self.rev}"
        if self.variant:
            text += f".{self.variant}"
        return text


def parse_version(text: VersionLike) -> BalenaVersion:
    """Parse a version (a :class:`BalenaVersion` is returned unchanged)."""
    return BalenaVersion.parse(text)


def compare_versions(a: VersionLike, b: VersionLike) -> int:
    """Return -1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``."""
    key_a, key_b = parse_version(a).sort_key, parse_version(b).sort_key
    return (key_a > key_b) - (key_a < key_b)


def same_version(a: str, b: str) -> bool:
    """Versions compare as versions (``2.113.0`` == ``v2.113.0``); unparsable ones as strings."""
    try:
        return parse_version(a) == parse_version(b)
    except ValueError:
        return a == b


def version_key(text: VersionLike) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...], int]:
    """``sorted(versions, key=version_key)`` sorts version strings by balenaOS precedence."""
    return parse_version(text).sort_key
