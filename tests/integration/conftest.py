# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the integration tests (the harness itself is osfleet_harness.py).

* ``make_lab(prefix, devices=3, os_version="2.88.4", profile="ab")``: brings a lab up (``profile``:
  the lab's device profile, ``"ab"`` or ``"balenaos"``; None: labctl's default,
  ``osfleet_lab.lab.DEFAULT_PROFILE`` = balenaos, unless ``OSFLEET_LAB_PROFILE`` is set); every lab made goes
  down at the end of the session (``OSFLEET_KEEP_LABS=1`` keeps them for debugging).
  A module's ``lab`` goes down already when the module's tests are done.
* ``lab``: the test module's lab (module attributes ``LAB_PREFIX``, ``LAB_DEVICES``, ``LAB_OS``,
  ``LAB_PROFILE``, default ``"ab"``: the modules written for the generic A/B layout; ``OSFLEET_LAB_SUFFIX``
  is appended to the prefix).
* ``ansible_playbook(lab, *args, **kw)``: :func:`osfleet_harness.ansible_playbook` with a work
  directory under the test's tmp path.
"""

from __future__ import annotations

import contextlib
import os
import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, labctl_down, labctl_up
from osfleet_harness import ansible_playbook as run_playbook

KEEP_LABS = os.environ.get("OSFLEET_KEEP_LABS") == "1"
#: appended to each module's LAB_PREFIX (a lab prefix has at most 12 characters), so that two
#: test sessions on one machine do not share (and take down) each other's labs
LAB_SUFFIX = os.environ.get("OSFLEET_LAB_SUFFIX", "")
#: what labctl reads for the device profile of `up` without --profile (osfleet_lab.lab.PROFILE_ENV)
LAB_PROFILE_ENV = "OSFLEET_LAB_PROFILE"
#: the profile of a test module's lab unless it sets LAB_PROFILE: the modules written for the
#: generic A/B layout (labctl itself defaults to balenaos); None would take labctl's default
DEFAULT_TEST_PROFILE = "ab"


@contextlib.contextmanager
def _lab_profile(profile: str | None) -> Iterator[None]:
    """``labctl up`` of the block makes ``profile`` devices (its ``OSFLEET_LAB_PROFILE``); None: the default."""
    if profile is None:
        yield
        return
    saved = os.environ.get(LAB_PROFILE_ENV)
    os.environ[LAB_PROFILE_ENV] = profile
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(LAB_PROFILE_ENV, None)
        else:
            os.environ[LAB_PROFILE_ENV] = saved


#: the prefixes of the labs made so far in this session (by make_lab), oldest first
_MADE: list[str] = []
#: the labs of _MADE already taken down
_DOWN: set[str] = set()


def _take_down(prefix: str) -> None:
    """``labctl down`` of a lab this session made, once."""
    if prefix not in _DOWN:
        labctl_down(prefix)
        _DOWN.add(prefix)


@pytest.fixture(scope="session")
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(prefix, devices=3, os_version="2.88.4", profile="ab", *extra)`` (``extra``: more
    ``labctl up`` options); a lab goes down when the module that made it is done (see
    ``_labs_down_after_module``), and every lab at the end of the session."""
    if os.geteuid() != 0:
        pytest.fail("the integration tests need root (loop devices, namespaces)")
    made = _MADE

    def factory(prefix: str, devices: int = 3, os_version: str | None = "2.88.4", profile: str | None = DEFAULT_TEST_PROFILE,
                *extra: str) -> Lab:
        labctl_down(prefix)
        made.append(prefix)
        _DOWN.discard(prefix)
        with _lab_profile(profile):
            return Lab.from_inventory(prefix, labctl_up(prefix, devices, os_version, *extra))

    yield factory
    if not KEEP_LABS:
        for prefix in made:
            _take_down(prefix)


@pytest.fixture(scope="module", autouse=True)
def _labs_down_after_module() -> Iterator[None]:
    """Take down the labs a module made (its own ``lab`` fixture or ``make_lab`` calls) when its
    tests are done: the idle devices of a finished module (heartbeats, the user application,
    sshd; ten of them for the rollout tests) would otherwise take CPU from every module after it
    on that worker. Autouse and module-scoped, it is set up before the module's fixtures and so
    torn down after them."""
    before = len(_MADE)
    yield
    if not KEEP_LABS:
        for prefix in _MADE[before:]:
            _take_down(prefix)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, make_lab: Callable[..., Lab]) -> Iterator[Lab]:
    """The module's lab: ``LAB_PREFIX`` and ``LAB_DEVICES`` (default 3) from the test module.

    It goes down when the module's tests are done: its idle devices (heartbeats, the user
    application, sshd) would otherwise take CPU from every module after it.
    """
    module = request.module
    prefix = getattr(module, "LAB_PREFIX") + LAB_SUFFIX
    yield make_lab(prefix, getattr(module, "LAB_DEVICES", 3), getattr(module, "LAB_OS", "2.88.4"), getattr(module, "LAB_PROFILE", DEFAULT_TEST_PROFILE))
    if not KEEP_LABS:
        _take_down(prefix)


@pytest.fixture
def ansible_playbook(tmp_path: Path) -> Callable[..., PlaybookRun]:
    """``ansible_playbook(lab, *args, **kw)`` with its events and logs under the test's tmp path."""

    def run(lab: Lab, *args: str, **kwargs: t.Any) -> PlaybookRun:
        kwargs.setdefault("workdir", tmp_path / "ansible")
        return run_playbook(lab, *args, **kwargs)

    return run


#: the modules that take longest, first: xdist (--dist loadfile) hands the modules out in
#: collection order, so the long ones start at once and the short ones fill in around them
#: instead of one long module starting last and running alone
LONG_MODULES = ("test_faults", "test_link_faults", "test_advanced", "test_update", "test_hostapp_update",
                "test_hostapp_switch", "test_rollout", "test_rehearsal", "test_writer_guards", "test_steps_prepare", "test_lab_faults",
                "test_takeover_hostapp", "test_steps_switch", "test_rollout_gates", "test_rollout_revert",
                "test_hostapp_writer",
                "test_operator", "test_catalog_cache", "test_check_mode", "test_switch_hardening", "test_report",
                "test_hostapp_push")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(getattr(getattr(item, "module", None), "__name__", ""), len(rank)))


#: per test module, from the reports (under xdist: the controller's, with the worker of each):
#: the seconds of its tests (setup, call, teardown), its first start and last stop, its worker
_MODULE_TIMES: dict[str, dict[str, t.Any]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _MODULE_TIMES.setdefault(report.nodeid.split("::")[0], {"seconds": 0.0, "start": report.start, "stop": report.stop, "worker": "-"})
    entry["seconds"] += report.duration
    entry["start"], entry["stop"] = min(entry["start"], report.start), max(entry["stop"], report.stop)
    node = getattr(report, "node", None)
    entry["worker"] = getattr(getattr(node, "gateway", None), "id", entry["worker"])


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    """The modules by the time they took, with their worker and when they ran, for ordering
    LONG_MODULES (the worker that ends last decides the suite's wall time)."""
    if not _MODULE_TIMES:
        return
    begin = min(e["start"] for e in _MODULE_TIMES.values())
    terminalreporter.write_sep("=", "integration modules by time (seconds; start and stop from the first start)")
    for module, e in sorted(_MODULE_TIMES.items(), key=lambda item: -item[1]["seconds"]):
        terminalreporter.write_line(f"{e['seconds']:8.1f}  {e['worker']:>4}  {e['start'] - begin:7.1f} .. {e['stop'] - begin:7.1f}  {module}")
    for worker in sorted({e["worker"] for e in _MODULE_TIMES.values()}):
        mine = [e for e in _MODULE_TIMES.values() if e["worker"] == worker]
        terminalreporter.write_line(f"worker {worker}: {len(mine)} modules, {sum(e['seconds'] for e in mine):.1f} s of tests, "
                                    f"last stop at {max(e['stop'] for e in mine) - begin:.1f} s")
