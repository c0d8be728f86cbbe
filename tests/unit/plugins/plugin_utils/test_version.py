# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import itertools
import random

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.version import (
    BalenaVersion,
    compare_versions,
    parse_version,
    same_version,
    version_key,
)

PARSE_CASES = [
    # text, (major, minor, patch, rev, prerelease, variant), canonical
    ("2.88.4", (2, 88, 4, 0, (), None), "2.88.4"),
    ("v2.88.4", (2, 88, 4, 0, (), None), "2.88.4"),
    (" 2.88.4\n", (2, 88, 4, 0, (), None), "2.88.4"),
    ("2.113.0+rev1", (2, 113, 0, 1, (), None), "2.113.0+rev1"),
    ("6.0.50+rev1", (6, 0, 50, 1, (), None), "6.0.50+rev1"),
    ("2.88.4.dev", (2, 88, 4, 0, (), "dev"), "2.88.4.dev"),
    ("2.88.4.prod", (2, 88, 4, 0, (), "prod"), "2.88.4.prod"),
    ("2.88.4+rev1.dev", (2, 88, 4, 1, (), "dev"), "2.88.4+rev1.dev"),
    ("2.88.4+rev12.prod", (2, 88, 4, 12, (), "prod"), "2.88.4+rev12.prod"),
    ("2.88.4-rev1", (2, 88, 4, 1, (), None), "2.88.4+rev1"),
    ("2.88.4-rev1.dev", (2, 88, 4, 1, (), "dev"), "2.88.4+rev1.dev"),
    ("2.0.0.rev1", (2, 0, 0, 1, (), None), "2.0.0+rev1"),
    ("2.0.0-beta12", (2, 0, 0, 0, ("beta12",), None), "2.0.0-beta12"),
    ("2.0.0-beta.12", (2, 0, 0, 0, ("beta", 12), None), "2.0.0-beta.12"),
    ("2.0.0-beta12.dev", (2, 0, 0, 0, ("beta12",), "dev"), "2.0.0-beta12.dev"),
    ("2.0.0-beta12+rev2", (2, 0, 0, 2, ("beta12",), None), "2.0.0-beta12+rev2"),
    ("2024.1.0", (2024, 1, 0, 0, (), None), "2024.1.0"),
    ("2.113.0+rev1.build5", (2, 113, 0, 1, (), None), "2.113.0+rev1"),
    ("0.0.0", (0, 0, 0, 0, (), None), "0.0.0"),
]


@pytest.mark.parametrize("text, fields, canonical", PARSE_CASES)
def test_parse(text, fields, canonical):
    version = BalenaVersion.parse(text)
    assert (version.major, version.minor, version.patch, version.rev, version.prerelease, version.variant) == fields
    assert version.raw == text
    assert str(version) == canonical
    assert BalenaVersion.parse(canonical) == version
    assert str(BalenaVersion.parse(canonical)) == canonical


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "expected MAJOR.MINOR.PATCH"),
        ("2.88", "expected MAJOR.MINOR.PATCH"),
        ("2.88.4.5", "unexpected suffix '.5'"),
        ("2.88.x", "expected MAJOR.MINOR.PATCH"),
        ("latest", "expected MAJOR.MINOR.PATCH"),
        ("2.88.4.foo", "unexpected suffix '.foo'"),
        ("2.88.4+rev1.dev.prod", "both dev and prod markers"),
        ("2.88.4-rev1+rev2", "more than one revision marker"),
        ("02.88.4", "expected MAJOR.MINOR.PATCH"),
        ("2.88.4 ; reboot", "expected MAJOR.MINOR.PATCH"),
        (None, "expected a string, got NoneType"),
        (2.88, "expected a string, got float"),
    ],
)
def test_parse_rejects(text, why):
    with pytest.raises(ValueError) as info:
        BalenaVersion.parse(text)
    message = str(info.value)
    assert message.startswith(f"invalid balenaOS version {text!r}: ")
    assert why in message


# Strictly increasing; every pair is checked both ways.
ORDERED = [
    "1.24.0",
    "2.0.0-alpha",
    "2.0.0-alpha.1",
    "2.0.0-alpha.beta",
    "2.0.0-beta",
    "2.0.0-beta.2",
    "2.0.0-beta.11",
    "2.0.0-beta12",
    "2.0.0-rc.1",
    "2.0.0",
    "2.0.0+rev1",
    "2.0.0+rev2",
    "2.0.0+rev10",
    "2.0.1",
    "2.9.0",
    "2.14.0",
    "2.14.0+rev1",
    "2.16.0",
    "2.88.4",
    "2.88.4+rev1",
    "2.100.0",
    "2.113.0",
    "2.113.0+rev1",
    "2.113.1",
    "6.0.39",
    "6.0.50",
    "6.0.50+rev1",
    "10.0.0",
    "2024.1.0",
    "2024.1.0+rev1",
    "2024.10.0",
]


@pytest.mark.parametrize("lower, higher", list(itertools.combinations(ORDERED, 2)))
def test_ordering_pairs(lower, higher):
    low, high = parse_version(lower), parse_version(higher)
    assert low < high and high > low and low != high
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, lower) == 1


def test_sorted_with_version_key():
    shuffled = ORDERED[:]
    random.Random(4).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == ORDERED


@pytest.mark.parametrize(
    "a, b",
    [
        ("2.88.4", "v2.88.4"),
        ("2.88.4+rev1", "2.88.4-rev1"),
        ("2.88.4+rev1", "2.88.4+rev1.dev"),
        ("2.88.4.dev", "2.88.4.prod"),
        ("2.88.4", "2.88.4.prod"),
        ("2.113.0+rev1", "2.113.0+rev1.build7"),
        ("2.0.0+rev1", "2.0.0.rev1"),
    ],
)
def test_equal_ignoring_variant_and_build(a, b):
    assert compare_versions(a, b) == 0
    assert parse_version(a) == parse_version(b)
    assert hash(parse_version(a)) == hash(parse_version(b))
    assert len({parse_version(a), parse_version(b)}) == 1


def test_compare_with_non_version_is_not_implemented():
    assert parse_version("2.88.4") != "2.88.4"
    with pytest.raises(TypeError):
        assert parse_version("2.88.4") < "2.88.5"


def test_parse_returns_same_object_for_parsed_input():
    version = parse_version("2.88.4")
    assert BalenaVersion.parse(version) is version


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("2.113.0", "2.113.0", True), ("2.113.0", "v2.113.0", True), ("2.113.0", "2.113.1", False), ("weird", "weird", True), ("weird", "other", False)],
)
def test_same_version(a, b, same):
    assert same_version(a, b) is same
