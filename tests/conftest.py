# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared by every test directory: under ``make test`` no test may be skipped.

Some tests skip when the machine lacks what they need (root, loop devices, jq, flock,
docker-registry, skopeo, ...), so that a developer can run the rest anywhere. ``make`` installs all
of it and sets ``OSFLEET_TESTS_STRICT=1``: then a skipped or xfailed test fails the run and is
listed, so no behaviour goes unchecked in CI because a dependency went missing.
"""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("OSFLEET_TESTS_STRICT") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    hidden = [*reporter.stats.get("skipped", []), *reporter.stats.get("xfailed", [])]
    if not hidden:
        return
    reporter.write_line("")
    reporter.write_line(f"OSFLEET_TESTS_STRICT: {len(hidden)} test(s) skipped or xfailed, which fails the run:", red=True)
    for report in hidden:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(getattr(report, "wasxfail", "") or report.longrepr)
        reporter.write_line(f"  {report.nodeid}: {reason}")
    if exitstatus == 0:
        session.exitstatus = 1
