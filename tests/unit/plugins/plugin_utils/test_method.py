# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""method.choose_method (the rules, their order and reasons) and where balena_semver differs from
version.BalenaVersion. test_method_reference.py holds both against balena's own packages."""

from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import balena_semver as bsemver
from ansible_collections.osfleet.hup.plugins.plugin_utils.method import MethodChoice, choose_method
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import compare_versions, parse_version

JX = "jetson-xavier"
NX = "jetson-xavier-nx-devkit"
GX = "genericx86-64-ext"


@pytest.mark.parametrize(
    "device_type, current, target, cutover, expected",
    [
        (GX, "2.88.4", "2.113.0", None, "balenahup"),
        (JX, "5.1.0", "6.0.50", None, "takeover"),  # built-in table
        (JX, "5.1.0", "6.0.49", None, "balenahup"),
        (JX, "6.0.50", "6.1.0", None, "balenahup"),  # already past the cut-over
        (JX, "5.1.0.dev", "6.1.0.dev", None, "takeover"),
        (NX, "6.0.50", "6.0.50+rev1", None, "takeover"),
        (NX, "6.0.50+rev1", "6.0.51", None, "balenahup"),
        ("jetson-xavier-nx-devkit-emmc", "6.0.38", "6.0.39", None, "takeover"),
        ("my-board", "2.88.4", "3.0.0", "3.0.0", "takeover"),  # catalog value
        ("my-board", "2.88.4", "2.99.0", "3.0.0", "balenahup"),
        (JX, "5.1.0", "6.0.50", "7.0.0", "balenahup"),  # explicit value wins over the table
        # balena's semantics (balena_semver), where version.BalenaVersion would answer otherwise:
        (JX, "6.0.49.dev", "6.0.50.dev", None, "balenahup"),  # a dev build sorts before 6.0.50
        (JX, "6.0.49.prod", "6.0.50.prod", None, "takeover"),  # a prod build sorts after it
        (JX, "6.0.50.dev", "6.0.51.dev", None, "balenahup"),  # the running .dev is stripped first
        (NX, "6.0.50.dev", "6.0.50+rev1.dev", None, "balenahup"),
        (JX, "5.1.0", "6.0.50-rev1", None, "balenahup"),  # -rev1 is a prerelease of 6.0.50
        (JX, "6.0.049", "6.0.050", None, "takeover"),  # leading zeros dropped: 6.0.49 -> 6.0.50
    ],
)
def test_methods(device_type, current, target, cutover, expected):
    choice = choose_method(device_type, current, target, min_takeover_version=cutover)
    assert not choice.refused
    assert (choice.method, choice.needs) == (expected, expected)
    assert choice.rule == ("takeover-version" if expected == "takeover" else "standard")


@pytest.mark.parametrize(
    "layouts, archs, expected",
    [
        (("balena-gpt-v1", "balena-gpt-v1"), ("amd64", "amd64"), ("balenahup", "standard")),
        (("balena-gpt-v1", "balena-gpt-v2"), ("amd64", "amd64"), ("takeover", "partition-layout")),
        (("balena-gpt-v1", "balena-gpt-v1"), ("armv7hf", "aarch64"), ("takeover", "architecture")),
        (("balena-gpt-v1", "balena-gpt-v2"), ("armv7hf", "aarch64"), ("takeover", "partition-layout")),
        ((None, "balena-gpt-v2"), (None, "aarch64"), ("balenahup", "standard")),  # unknown current: no evidence
    ],
)
def test_layout_and_arch(layouts, archs, expected):
    choice = choose_method(GX, "2.88.4", "2.113.0", current_layout=layouts[0], target_layout=layouts[1],
                           current_arch=archs[0], target_arch=archs[1])
    assert (choice.method, choice.rule) == expected


def test_reasons_name_versions_layouts_and_archs():
    assert choose_method(JX, "5.1.0", "6.1.0", current_layout="l4t-r32", target_layout="l4t-r35").reason == (
        "the partition layout changes from l4t-r32 to l4t-r35"
    )
    assert choose_method(JX, "5.1.0", "6.1.0", current_arch="armv7hf", target_arch="aarch64").reason == (
        "the architecture changes from armv7hf to aarch64"
    )
    assert choose_method(JX, "5.1.0", "6.1.0").reason == "jetson-xavier changes its partition layout at 6.0.50, between 5.1.0 and 6.1.0"
    assert choose_method(GX, "2.88.4", "2.113.0", current_layout="gpt", target_layout="gpt", current_arch="amd64",
                         target_arch="amd64").reason == (
        "the standard update works from 2.88.4 to 2.113.0: genericx86-64-ext has no takeover version, "
        "the partition layout stays gpt, the architecture stays amd64"
    )
    assert choose_method(JX, "6.0.50", "6.1.0").reason == (
        "the standard update works from 6.0.50 to 6.1.0: jetson-xavier's takeover version 6.0.50 is not between them"
    )


REFUSALS = [
    # current, target, rule, reason
    ("2.113.0", "2.88.4", "downgrade", "target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed)"),
    ("2.113.0", "2.113.0", "same-version", "the running 2.113.0 is the same version as the target 2.113.0"),
    ("2.113.0", "v2.113.0", "same-version", "the running 2.113.0 is the same version as the target v2.113.0"),
    ("2.88.4", "2.113.0.dev", "dev-prod-switch", "cannot switch between development and production: running 2.88.4, target 2.113.0.dev"),
    ("2.88.4.prod", "2.113.0.dev", "dev-prod-switch", "cannot switch between development and production: running 2.88.4.prod, target 2.113.0.dev"),
    ("2.88.4.dev", "2.113.0.prod", "dev-prod-switch", "cannot switch between development and production: running 2.88.4.dev, target 2.113.0.prod"),
    ("2.88.4", "2.113.0-dev", "dev-prod-switch", "cannot switch between development and production: running 2.88.4, target 2.113.0-dev"),
    # dev/prod first, then the downgrade
    ("2.113.0.dev", "2.88.4.prod", "dev-prod-switch", "cannot switch between development and production: running 2.113.0.dev, target 2.88.4.prod"),
    ("2.12.0", "2.113.0", "min-source-version", "the running 2.12.0 is older than 2.14.0+rev1, the oldest version this update supports"),
    ("2.14.0", "2.113.0", "min-source-version", "the running 2.14.0 is older than 2.14.0+rev1, the oldest version this update supports"),
    # a dev build sorts before the plain version: below the minimum
    ("2.14.0+rev1.dev", "2.113.0.dev", "min-source-version",
     "the running 2.14.0+rev1.dev is older than 2.14.0+rev1, the oldest version this update supports"),
    ("2.14.0+rev1", "2.15.9", "min-target-version", "target 2.15.9 is older than 2.16.0+rev1, the oldest target this update supports"),
    ("2.14.0+rev1", "2.16.0", "min-target-version", "target 2.16.0 is older than 2.16.0+rev1, the oldest target this update supports"),
    # build metadata counts (the normalized strings are compared last)
    ("2.88.4.prod", "2.88.4", "downgrade", "target 2.88.4 is older than the running 2.88.4.prod (downgrades are not allowed)"),
    ("2.88.4", "2.88.4-rev1", "downgrade", "target 2.88.4-rev1 is older than the running 2.88.4 (downgrades are not allowed)"),
    ("garbage", "2.113.0", "invalid-version", "the running version 'garbage' is not a balenaOS version"),
    ("2.88.4", "2.88", "invalid-version", "the target version '2.88' is not a balenaOS version"),
    (None, "2.113.0", "invalid-version", "the running version None is not a balenaOS version"),
]


@pytest.mark.parametrize("current, target, rule, reason", REFUSALS)
def test_refusals(current, target, rule, reason):
    choice = choose_method(GX, current, target)
    assert choice.refused and choice.method is None
    assert (choice.rule, choice.reason) == (rule, reason)


@pytest.mark.parametrize(
    "current, target",
    [
        ("2.88.4", "2.113.0"),  # no marker on the target: always allowed
        ("2.88.4.dev", "2.113.0"),
        ("2.88.4.dev", "2.113.0.dev"),
        ("2.88.4", "2.113.0.prod"),
        ("2.88.4+rev1.prod", "2.113.0+rev1.prod"),
        ("2.88.4+rev1.dev", "2.113.0+rev1.dev"),
        ("2.14.0+rev1", "2.16.0+rev1"),  # both minimums exactly
        ("2.14.0+rev1.prod", "2.16.0+rev1.prod"),
        # build metadata counts: these are updates, not the same version
        ("2.88.4", "2.88.4.prod"),
        ("2.88.4.dev", "2.88.4"),
        ("2.88.4-rev1", "2.88.4"),
        ("2.113.0+rev1", "2.113.0+rev1.build7"),
        ("2024.01.0", "2024.1.5"),  # ESR with a zero-padded month
    ],
)
def test_allowed(current, target):
    choice = choose_method(GX, current, target)
    assert not choice.refused, choice.reason
    assert choice.method == "balenahup"


def test_refused_update_still_says_which_method_it_needs():
    choice = choose_method(JX, "6.1.0", "5.1.0", current_layout="l4t-r35", target_layout="l4t-r32")
    assert (choice.method, choice.needs, choice.rule, choice.refused) == (None, "takeover", "downgrade", True)
    assert choose_method(GX, "x", "2.113.0").needs is None


def test_allow_downgrade_lifts_only_the_downgrade():
    assert choose_method(GX, "2.113.0", "2.88.4", allow_downgrade=True).method == "balenahup"
    assert choose_method(JX, "6.1.0", "5.1.0", current_layout="l4t-r35", target_layout="l4t-r32",
                         allow_downgrade=True).rule == "partition-layout"
    assert choose_method(GX, "2.113.0", "2.113.0", allow_downgrade=True).rule == "same-version"
    assert choose_method(GX, "2.113.0.dev", "2.88.4.prod", allow_downgrade=True).rule == "dev-prod-switch"
    assert choose_method(GX, "2.113.0", "2.12.0", allow_downgrade=True).rule == "min-target-version"


def test_as_dict():
    assert choose_method(GX, "2.113.0", "2.88.4").as_dict() == {
        "method": None, "needs": "balenahup", "rule": "downgrade", "refused": True,
        "reason": "target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed)",
    }
    assert MethodChoice("takeover", "architecture", "why").as_dict()["method"] == "takeover"


@pytest.mark.parametrize(
    "a, b, balena, osfleet",
    [
        # a, b, balena_semver.compare(a, b), version.compare_versions(a, b)
        ("2.88.4-rev1", "2.88.4", -1, 1),  # legacy -revN: a prerelease for balena, a revision for osfleet
        ("2.88.4-rev1", "2.88.4+rev1", -1, 0),
        ("2.88.4", "2.88.4.prod", -1, 0),  # variant and build metadata order for balena
        ("2.88.4.dev", "2.88.4", -1, 0),
        ("2.88.4+rev1", "2.88.4+rev1.dev", 1, 0),
        ("2.88.4+rev1.prod", "2.88.4+rev1", 1, 0),
        ("2.113.0+rev1", "2.113.0+rev1.build7", -1, 0),
        ("2.88.4+Build", "2.88.4+build", 1, 0),  # localeCompare: lowercase first
        ("2.0.0-beta12+rev2", "2.0.0-beta12+rev1", 1, 1),
        ("2.0.0-rc.1", "2.0.0-rc1", -1, -1),
        ("2024.1.0", "2.200.0", 1, 1),  # ESR
        ("2024.1.0+rev1", "2024.1.0", 1, 1),
        ("v2.88.4", "2.88.4", 0, 0),
        ("2.0.0.rev1", "2.0.0+rev1", 0, 0),
    ],
)
def test_balena_semver_differs_from_balena_version(a, b, balena, osfleet):
    first, second = a, b
    assert bsemver.compare(first, second) == balena
    assert bsemver.compare(second, first) == -balena
    assert compare_versions(a, b) == osfleet


@pytest.mark.parametrize(
    "text, normalized",
    [
        ("2024.01.0", "2024.1.0"),  # BalenaVersion refuses the leading zero
        ("2.0.05", "2.0.5"),
        ("balenaOS 2.88.4", "2.88.4"),
        ("2.88.4 (prod)", "2.88.4+prod"),
        ("2.88.4_rev1", "2.88.4+rev1"),
        ("2.88.4.DEV", "2.88.4+DEV"),
    ],
)
def test_balena_semver_normalizes_what_balena_version_refuses(text, normalized):
    assert bsemver.normalize(text) == normalized
    assert bsemver.parse(text) is not None
    with pytest.raises(ValueError):
        parse_version(text)


def test_balena_semver_parse_and_variant():
    parsed = bsemver.parse("v2.88.4-rc.1.dev+rev3.prod")
    assert parsed is not None
    assert (parsed.major, parsed.minor, parsed.patch, parsed.prerelease, parsed.build) == (2, 88, 4, ("rc", 1, "dev"), ("rev3", "prod"))
    assert (parsed.revision, parsed.variant) == (3, "dev")  # dev wins over prod
    assert bsemver.parse("2.88.4-rev1").revision is None  # in the prerelease: no revision
    assert bsemver.parse("2.88.4.DEV").variant is None  # markers are lowercase
    for bad in ("", "2.88", "02.88.4", "2.0.05-01", "x" * 300, None, 2.88):
        assert bsemver.parse(bad) is None, bad  # only one run of leading zeros is dropped


def test_balena_semver_compare_invalid_and_none():
    assert bsemver.compare(None, None) == 0
    assert bsemver.compare(None, "garbage") == -1
    assert bsemver.compare("garbage", "2.0.0") == -1  # invalid before valid
    assert bsemver.compare("abc", "abd") == -1  # two invalid ones: as strings
    assert bsemver.lt("2.0.0", "2.0.1") and bsemver.gte("2.0.1", "2.0.1")
