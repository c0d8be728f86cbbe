# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""method.choose_method and balena_semver held against balena's own npm packages.

A few hundred generated cases (seeded) go through balena-hup-action-utils and balena-semver in one
node run (tests/tools/hau/reference.js, installed by `make deps`) and through the Python port; each
must get the same answer: the method, or the refusal's rule (not its message). No skip: without
node or the packages the test fails.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import balena_semver as bsemver
from ansible_collections.osfleet.hup.plugins.plugin_utils.method import (
    DEFAULT_MIN_TAKEOVER_VERSIONS,
    MIN_SOURCE_VERSION,
    MIN_TARGET_VERSION,
    REFUSAL_RULES,
    RULE_DEV_PROD,
    RULE_DOWNGRADE,
    RULE_INVALID_VERSION,
    RULE_MIN_SOURCE,
    RULE_MIN_TARGET,
    RULE_SAME_VERSION,
    choose_method,
)

REFERENCE = Path(__file__).resolve().parents[3] / "tools" / "hau"

#: balena-hup-action-utils' error messages → our refusal rules
HAU_ERRORS = {
    "Invalid current balenaOS version": RULE_INVALID_VERSION,
    "Invalid target balenaOS version": RULE_INVALID_VERSION,
    "Updates cannot be performed between development and production balenaOS variants": RULE_DEV_PROD,
    "OS downgrades are not allowed": RULE_DOWNGRADE,
    "Current OS version matches Target OS version": RULE_SAME_VERSION,
    f"Current OS version must be >= {MIN_SOURCE_VERSION}": RULE_MIN_SOURCE,
    f"Target OS version must be >= {MIN_TARGET_VERSION}": RULE_MIN_TARGET,
}

PLAIN_TYPES = ("genericx86-64-ext", "raspberrypi4-64", "jetson-agx-orin-devkit")
BASES = (
    "2.12.0", "2.13.9", "2.14.0", "2.14.0+rev1", "2.14.0+rev2", "2.14.1", "2.15.9", "2.16.0", "2.16.0+rev1",
    "2.16.1", "2.88.4", "2.113.0", "2.113.0+rev1", "2.114.1", "5.1.0", "6.0.38", "6.0.39", "6.0.49", "6.0.50",
    "6.0.50+rev1", "6.0.51", "6.1.0", "2024.1.0", "2024.10.2", "2025.7.1+rev3",
    "6.0.049", "2.088.4",  # one run of leading zeros is dropped: 6.0.49, 2.88.4
)
# appended to a base (a "+..." one to a base without build metadata only)
SUFFIXES = (
    "", "", "", ".dev", ".prod", "+rev1", "+rev2", "+rev10", "+rev1.dev", "+rev1.prod", "-rc1", "-rc.2", "-beta12",
    "-rc1.dev", "-rev1", "-rev1.dev", ".rev1", "+build7", "+rev1.build7", "+dev", "+prod", "_rev1", " (prod)", "-dev",
    "+Build7", "+rev1.BUILD", "+a", ".DEV", ".Prod", "+rev01",
)
PREFIXES = ("", "", "", "", "v", "balenaOS ")
INVALID = ("", "latest", "2.88", "2.88.4.5", "02.88.4", "2.88.x", "2.88.4 ; reboot", "2.88.4+rev1.dev.prod+")


def _decorate(base: str, suffix: str, prefix: str) -> str:
    if "+" in base and suffix.startswith(("+", "_", ".rev")):
        suffix = "." + suffix[1:] if suffix.startswith("+") else ""
    return prefix + base + suffix


def _edge_versions(cutover: str) -> list[str]:
    """Versions at and around a cut-over: below, at, above, with revisions and dev/prod markers."""
    major, minor, patch = (int(part) for part in cutover.split("+")[0].split("."))
    below, above = f"{major}.{minor}.{patch - 1}", f"{major}.{minor}.{patch + 1}"
    plain = f"{major}.{minor}.{patch}"
    return [
        below, below + "+rev3", below + ".dev", plain + "-rc1", plain, plain + ".dev", plain + ".prod", plain + "+rev1",
        plain + "+rev1.dev", plain + "+rev1.prod", plain + "+rev2", above, above + ".dev", above + ".prod",
    ]


def generate_cases(seed: int = 10) -> list[tuple[str, t.Any, t.Any]]:
    """(device type, current, target): every cut-over edge pair, then seeded random ones."""
    cases = []
    for device_type, cutover in DEFAULT_MIN_TAKEOVER_VERSIONS.items():
        edges = _edge_versions(cutover)
        cases.extend((device_type, current, target) for current, target in itertools.product(edges, edges))
    rng = random.Random(seed)
    device_types = [*DEFAULT_MIN_TAKEOVER_VERSIONS, *PLAIN_TYPES]

    def version() -> str:
        return _decorate(rng.choice(BASES), rng.choice(SUFFIXES), rng.choice(PREFIXES))

    for _case in range(400):
        device_type, current = rng.choice(device_types), version()
        kind = rng.random()
        if kind < 0.1:
            target = current  # the same string
        elif kind < 0.2:
            target = _decorate(current.split("+")[0].split(" ")[-1].lstrip("v"), rng.choice(SUFFIXES), rng.choice(PREFIXES))
        elif kind < 0.23:
            target = rng.choice(INVALID)
        else:
            target = version()
        cases.append((device_type, current, target))
    cases.extend(("genericx86-64-ext", bad, "2.113.0") for bad in INVALID)
    return cases


def version_pool() -> list[str]:
    """Versions for the comparison check: every base with every suffix, some prefixes, invalid ones."""
    pool = [_decorate(base, suffix, "") for base in BASES[::3] for suffix in SUFFIXES]
    pool += [_decorate(base, "", prefix) for base in BASES[::5] for prefix in PREFIXES[4:]]
    return sorted(set(pool + list(INVALID) + [MIN_SOURCE_VERSION, MIN_TARGET_VERSION, *DEFAULT_MIN_TAKEOVER_VERSIONS.values()]))


def run_reference(request: dict[str, t.Any]) -> dict[str, t.Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make deps` (tests/tools/apt-packages.txt lists nodejs)")
    if not (REFERENCE / "node_modules" / "balena-hup-action-utils").is_dir():
        pytest.fail(f"balena-hup-action-utils is not installed in {REFERENCE}/node_modules: run `make deps`")
    proc = subprocess.run([node, str(REFERENCE / "reference.js")], input=json.dumps(request), capture_output=True,
                          text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference() -> dict[str, t.Any]:
    pool = version_pool()
    request = {"hup": generate_cases(), "compare": list(itertools.product(pool, pool)), "parse": pool}
    return {"request": request, "answer": run_reference(request)}


def test_generated_cases_cover_every_outcome(reference: dict[str, t.Any]) -> None:
    outcomes = [answer.get("method") or HAU_ERRORS.get(answer["error"], answer["error"]) for answer in reference["answer"]["hup"]]
    assert len(outcomes) >= 600
    assert set(outcomes) == {"balenahup", "takeover", *REFUSAL_RULES}, set(outcomes)
    # the refusals do not crowd out the decisions that matter
    assert outcomes.count("takeover") >= 50 and outcomes.count("balenahup") >= 100


def test_choose_method_agrees_with_balena_hup_action_utils(reference: dict[str, t.Any]) -> None:
    disagree = []
    for (device_type, current, target), answer in zip(reference["request"]["hup"], reference["answer"]["hup"]):
        want = answer.get("method") or HAU_ERRORS.get(answer["error"], f"unknown error {answer['error']!r}")
        choice = choose_method(device_type, current, target)
        got = choice.rule if choice.refused else choice.method
        if got != want:
            disagree.append(f"{device_type} {current!r} -> {target!r}: balena {want}, osfleet {got} ({choice.reason})")
    assert not disagree, f"{len(disagree)} of {len(reference['request']['hup'])} cases differ:\n" + "\n".join(disagree[:30])


def test_compare_agrees_with_balena_semver(reference: dict[str, t.Any]) -> None:
    pairs, answers = reference["request"]["compare"], reference["answer"]["compare"]
    assert len(pairs) > 3000
    disagree = [f"compare({a!r}, {b!r}): balena {want}, osfleet {bsemver.compare(a, b)}"
                for (a, b), want in zip(pairs, answers) if bsemver.compare(a, b) != want]
    assert not disagree, f"{len(disagree)} of {len(pairs)} pairs differ:\n" + "\n".join(disagree[:30])
    assert {-1, 0, 1} <= set(answers)


def test_parse_agrees_with_balena_semver(reference: dict[str, t.Any]) -> None:
    for version, want in zip(reference["request"]["parse"], reference["answer"]["parse"]):
        parsed = bsemver.parse(version)
        got = parsed and {"major": parsed.major, "minor": parsed.minor, "patch": parsed.patch,
                          "prerelease": list(parsed.prerelease), "build": list(parsed.build)}
        assert got == want, version
