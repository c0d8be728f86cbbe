# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run_log step's decisions: the outcome line of a run, which old run logs go (rotation),
where the controller keeps its copy. Pure functions; the action plugin does the rest."""

from __future__ import annotations

import os
import re
import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError

#: the outcomes a run ends with
OUTCOMES = ("committed", "rolled_back", "failed", "interrupted", "refused", "unchanged")
#: the run logs of the collection in a log directory (the role names them osfleet-hup.<run id>.log)
RUN_LOG_NAME = re.compile(r"^osfleet-hup\.[A-Za-z0-9._-]+\.log$")
#: a line of the log listing (scripts/run_log_end.sh): "<mtime seconds> <name>"
_LISTED = re.compile(r"^(\d+) (\S+)$")


@dataclass(frozen=True)
class Rotation:
    keep: list[str]
    remove: list[str]


def rotation(listing: str, current: str, keep: int) -> Rotation:
    """The run logs to remove so that the newest ``keep`` remain (the current run's always stays).

    ``listing``: one "<mtime> <name>" line per file of the log directory; files that are not run
    logs of the collection are never touched. Newest first by mtime, then by name."""
    if keep < 1:
        raise PlanError(f"keep must be at least 1 (the current run's log), not {keep}")
    logs: list[tuple[int, str]] = []
    for line in listing.splitlines():
        m = _LISTED.match(line.strip())
        if m and RUN_LOG_NAME.match(m.group(2)):
            logs.append((int(m.group(1)), m.group(2)))
    ordered = [name for _mtime, name in sorted(logs, key=lambda x: (x[0], x[1]), reverse=True) if name != current]
    kept = ordered[: keep - 1]
    return Rotation(keep=[current] + kept, remove=ordered[keep - 1:])


def outcome_entry(outcome: str, msg: str, failed_step: str | None) -> dict[str, t.Any]:
    """The last line of a run's log: how the run ended."""
    if outcome not in OUTCOMES:
        raise PlanError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    entry: dict[str, t.Any] = {"step": "outcome", "outcome": outcome, "changed": False, "failed": outcome in ("failed", "interrupted", "refused"),
                               "actions": [], "msg": msg}
    if failed_step:
        entry["failed_step"] = failed_step
    return entry


def copy_path(copy_to: str, host: str, log_path: str, cwd: str) -> str:
    """Where the controller keeps its copy: <copy_to>/<host>/<the log's file name>; a relative
    copy_to is taken from the directory ansible-playbook runs in."""
    if not host or "/" in host or host in (".", ".."):
        raise PlanError(f"cannot keep a copy for the host name {host!r}")
    name = os.path.basename(log_path)
    if not RUN_LOG_NAME.match(name):
        raise PlanError(f"the run log {log_path!r} is not named osfleet-hup.<run id>.log")
    base = copy_to if os.path.isabs(copy_to) else os.path.join(cwd, copy_to)
    return os.path.join(os.path.normpath(base), host, name)
