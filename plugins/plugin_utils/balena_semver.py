# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""balena-semver's parsing and ordering, as balena-hup-action-utils uses them to choose the method.

A port of balena-semver 4.1.16 (``normalize``, ``parse``, ``compare``) on top of node-semver 7's
strict parsing, so that :mod:`method` gives balena's own answers (held against the npm packages by
``tests/unit/plugins/plugin_utils/test_method_reference.py``). It differs from
:class:`version.BalenaVersion` (which the rest of the collection uses) on purpose:

- ``2.88.4-rev1`` is a prerelease of 2.88.4 (older than it), not ``2.88.4+rev1``;
- build metadata orders: after the semver precedence and the revision (``revN`` in the build part
  only), a ``dev`` build identifier sorts first, then the normalized strings are compared as
  JavaScript's ``localeCompare`` does (ICU root collation), so ``2.88.4 < 2.88.4+prod``,
  ``2.88.4.dev < 2.88.4`` and ``2.113.0+rev1 < 2.113.0+rev1.build7``: only identical normalized
  strings are equal;
- ``v``, ``.revN``, ``.dev``/``.prod``, ``_build``, ``(prod)`` and "balenaOS" forms are normalized
  first, and one run of leading zeros is dropped (``2.0.05`` is 2.0.5);
- an unparsable version sorts before every valid one instead of raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

#: node-semver: longer strings do not parse; numbers above this do not parse (JavaScript numbers)
MAX_LENGTH = 256
#: longer texts are refused before normalize() (which only shortens a text): some of its patterns
#: take quadratic time on hostile input ("1.1.1.1...": a 4000-character text took 6 s). balena-semver
#: normalizes first, so only a text that normalize() shortens by half (padded with "balena os"
#: words or leading zeros) is judged differently
MAX_INPUT_LENGTH = 2 * MAX_LENGTH
MAX_SAFE_INTEGER = 2**53 - 1

_NUM = r"0|[1-9][0-9]*"
_PRE_ID = rf"(?:{_NUM}|[0-9]*[a-zA-Z-][a-zA-Z0-9-]*)"
_FULL = re.compile(
    rf"v?({_NUM})\.({_NUM})\.({_NUM})"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+([a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*))?"
)
_NUMERIC = re.compile(r"[0-9]+")
_REVISION = re.compile(r"rev([0-9]+)")

# balena-semver's normalize(): (pattern, replacement, count; 0 = every match), in its order
_NORMALIZE: tuple[tuple[re.Pattern[str], str, int], ...] = (
    (re.compile(r"([0-9]+\.[0-9]+\.[0-9]+)_(\w+)", re.ASCII), r"\1+\2", 1),
    (re.compile(r"(\.[0-9]+)\.rev"), r"\1+rev", 1),
    (re.compile(r"([0-9]+\.[0-9]+\.[0-9]+)\.(dev|prod)\b", re.ASCII | re.IGNORECASE), r"\1+\2", 1),
    (re.compile(r"([0-9]+\.[0-9]+\.[0-9]+(?:[-.][0-9a-z]+)*) \(([0-9a-z]+)\)", re.ASCII | re.IGNORECASE), r"\1+\2", 1),
    (re.compile(r"([0-9]+\.[0-9]+\.[0-9]+(?:[-+.][0-9a-z]+)*) \(([0-9a-z]+)\)", re.ASCII | re.IGNORECASE), r"\1.\2", 1),
    (re.compile(r"([^0-9])0+([1-9]+)", re.ASCII | re.IGNORECASE), r"\1\2", 1),
    (re.compile(r"(resin|balena)\s*os\s*", re.IGNORECASE), "", 0),
    (re.compile(r"\s+\([A-Za-z0-9_]+\)\Z"), "", 1),
    (re.compile(r"\Av"), "", 1),
)

# ICU root collation of the characters a normalized version can hold (primary strength: letters
# case-folded; then uppercase after lowercase); other characters come after, by code point.
_COLLATION = "\t\n\x0b\x0c\r _-.+0123456789abcdefghijklmnopqrstuvwxyz"
_PRIMARY = {char: index for index, char in enumerate(_COLLATION)}

Identifier = Union[int, str]


@dataclass(frozen=True)
class SemVer:
    """A version as node-semver parses it (``prerelease``: numbers and strings; ``build``: strings)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[Identifier, ...]
    build: tuple[str, ...]
    normalized: str

    @property
    def revision(self) -> int | None:
        """balena-semver ``getRevision``: the first ``revN`` build identifier."""
        for part in self.build:
            match = _REVISION.fullmatch(part)
            if match:
                return int(match.group(1))
        return None

    @property
    def variant(self) -> str | None:
        """balena-hup-action-utils ``getVariant``: ``dev`` or ``prod`` among the build and prerelease identifiers."""
        parts = (*self.build, *self.prerelease)
        return next((variant for variant in ("dev", "prod") if variant in parts), None)


def normalize(version: str) -> str:
    """balena-semver ``normalize``: the string node-semver is given."""
    text = version.strip()
    for pattern, replacement, count in _NORMALIZE:
        text = pattern.sub(replacement, text, count=count)
    return text


def _identifier(text: str) -> Identifier:
    if _NUMERIC.fullmatch(text) and int(text) < MAX_SAFE_INTEGER:
        return int(text)
    return text


def parse(version: Any) -> SemVer | None:
    """balena-semver ``parse``: None when the version does not parse."""
    if not isinstance(version, str) or len(version) > MAX_INPUT_LENGTH:
        return None
    normalized = normalize(version)
    if len(normalized) > MAX_LENGTH:
        return None
    match = _FULL.fullmatch(normalized.strip())
    if match is None:
        return None
    numbers = [int(match.group(index)) for index in (1, 2, 3)]
    if any(number > MAX_SAFE_INTEGER for number in numbers):
        return None
    prerelease = tuple(_identifier(item) for item in match.group(4).split(".")) if match.group(4) else ()
    build = tuple(match.group(5).split(".")) if match.group(5) else ()
    return SemVer(numbers[0], numbers[1], numbers[2], prerelease, build, normalized)


def _sign(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _compare_identifiers(a: Identifier, b: Identifier) -> int:
    """node-semver ``compareIdentifiers``: numbers by value and before strings."""
    a_num, b_num = isinstance(a, int) or bool(_NUMERIC.fullmatch(a)), isinstance(b, int) or bool(_NUMERIC.fullmatch(b))
    if a_num and b_num:
        return _sign(float(a), float(b))  # JavaScript numbers
    if a_num != b_num:
        return -1 if a_num else 1
    return _sign(str(a), str(b))


def _compare_semver(a: SemVer, b: SemVer) -> int:
    """node-semver ``compare``: main version, then prerelease; build metadata does not count."""
    main = _sign((a.major, a.minor, a.patch), (b.major, b.minor, b.patch))
    if main or a.prerelease == b.prerelease:
        return main
    if not a.prerelease or not b.prerelease:
        return 1 if not a.prerelease else -1
    for item_a, item_b in zip(a.prerelease, b.prerelease):
        if item_a != item_b:
            return _compare_identifiers(item_a, item_b)
    return _sign(len(a.prerelease), len(b.prerelease))


def _collation_key(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    primary = tuple(_PRIMARY.get(char.lower(), len(_COLLATION) + ord(char)) for char in text)
    tertiary = tuple(int(char.isupper()) for char in text)
    return primary, tertiary


def locale_compare(a: str, b: str) -> int:
    """JavaScript ``a.localeCompare(b)`` for the characters of a version (ICU root collation)."""
    if a == b:
        return 0
    return _sign(_collation_key(a), _collation_key(b)) or _sign(a, b)


def compare(a: Any, b: Any) -> int:
    """balena-semver ``compare``: -1, 0 or 1; None first, then unparsable versions, then valid ones."""
    if a is None or b is None:
        return _sign(a is not None, b is not None)
    # a text too long to parse is compared as it is (normalize would take quadratic time on it)
    text_a, text_b = (normalize(x) if len(x) <= MAX_INPUT_LENGTH else x for x in (a, b))
    semver_a, semver_b = parse(a), parse(b)
    if semver_a is None or semver_b is None:
        if semver_a is not None or semver_b is not None:
            return 1 if semver_a is not None else -1
        return _sign(text_a, text_b)
    return (
        _compare_semver(semver_a, semver_b)
        or _sign(semver_a.revision or 0, semver_b.revision or 0)
        or -_sign("dev" in semver_a.build, "dev" in semver_b.build)
        or locale_compare(text_a, text_b)
    )


def lt(a: Any, b: Any) -> bool:
    """balena-semver ``lt``."""
    return compare(a, b) < 0


def gte(a: Any, b: Any) -> bool:
    """balena-semver ``gte``."""
    return compare(a, b) >= 0
