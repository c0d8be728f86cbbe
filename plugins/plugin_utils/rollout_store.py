# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""A rollout's state directory on the controller (``hup_rollout_dir``)::

    <dir>/plan.json           the frozen plan: waves and their devices, limits, the spec digest
    <dir>/state.json          the rollout's status and each wave's (passed, halted, baking, ...)
    <dir>/rehearsal.json      the rehearsal gate the last run that required evidence started on
    <dir>/approvals.json      wave -> who approved it, when, the remark, the plan digest
    <dir>/devices/<host>.json one record per device (plugin_utils.rollout.STATUSES)
    <dir>/lock                the run that drives the rollout (its ansible-playbook pid)
    <dir>/report/             the report of the last run (callback osfleet.hup.report)

Every file is written atomically (a temporary file beside it, fsync, rename, fsync of the
directory): a controller killed at any moment leaves each file whole, old or new.

The lock belongs to an ``ansible-playbook`` process (the parent of the worker that runs the
module): it holds from the rollout's first play to its last, across the plays' workers. A lock
whose process is gone (or is another process with the same pid: its start time differs) is stale
and taken over. A start that fails after taking the lock releases it (plugins/action/rollout.py).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import typing as t
import urllib.parse

from ansible_collections.osfleet.hup.plugins.plugin_utils.localfile import write_atomic
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import RolloutError


def default_dir(rollout_id: str) -> str:
    """``$XDG_STATE_HOME/osfleet-hup/rollouts/<id>`` (``~/.local/state/...`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "osfleet-hup", "rollouts", rollout_id)


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field 22), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def operator() -> str:
    """Who runs this: the sudo user when there is one, else the login name."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


class RolloutDir:
    """The state directory of one rollout."""

    def __init__(self, path: str) -> None:
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def device_file(self, host: str) -> str:
        return os.path.join(self.path, "devices", urllib.parse.quote(host, safe="") + ".json")

    # -- reading
    def load(self, name: str, default: t.Any = None) -> t.Any:
        path = self.file(name)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            raise RolloutError(f"cannot read {path}: {exc}") from None

    def plan(self) -> dict[str, t.Any] | None:
        return t.cast("dict[str, t.Any] | None", self.load("plan.json"))

    def state(self) -> dict[str, t.Any]:
        return t.cast("dict[str, t.Any]", self.load("state.json", {"status": "planned", "waves": {}}))

    def approvals(self) -> dict[str, dict[str, t.Any]]:
        return t.cast("dict[str, dict[str, t.Any]]", self.load("approvals.json", {}))

    def records(self, hosts: t.Iterable[str]) -> dict[str, dict[str, t.Any]]:
        out = {}
        for host in hosts:
            path = self.device_file(host)
            try:
                with open(path, encoding="utf-8") as handle:
                    out[host] = json.load(handle)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                raise RolloutError(f"{host}: cannot read its rollout record {path}: {exc}") from None
        return out

    # -- writing
    def _write(self, path: str, data: t.Any) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", RolloutError)

    def save(self, name: str, data: t.Any) -> None:
        self._write(self.file(name), data)

    def save_record(self, host: str, record: dict[str, t.Any]) -> None:
        self._write(self.device_file(host), record)

    # -- the lock
    def lock_holder(self) -> dict[str, t.Any] | None:
        holder = self.load("lock")
        return holder if isinstance(holder, dict) else None

    def acquire(self, pid: int, rollout_id: str) -> str | None:
        """Take the lock for process ``pid``; a note when a stale lock was taken over. Raises when
        another live run holds it."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        holder = self.lock_holder()
        note = None
        if holder:
            if int(holder.get("pid") or 0) == pid and holder.get("start") == process_start(pid):
                return None
            if process_start(int(holder.get("pid") or 0)) == holder.get("start") and holder.get("start") is not None:
                raise RolloutError(f"rollout {rollout_id} is driven by another run: ansible-playbook pid {holder.get('pid')} "
                                   f"of {holder.get('user')}@{holder.get('controller')} since {holder.get('since')}; "
                                   "wait for it to end (two runs never drive one rollout)")
            note = (f"took over the lock of a run that ended without releasing it (pid {holder.get('pid')}, "
                    f"since {holder.get('since')})")
        mine = {"pid": pid, "start": process_start(pid), "user": operator(), "controller": socket.gethostname(),
                "since": iso(time.time())}
        if holder:
            self.save("lock", mine)
        else:
            try:
                fd = os.open(self.file("lock"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise RolloutError(f"rollout {rollout_id}: another run took the lock at this moment; run again") from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(mine, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        return note

    def holds(self, pid: int) -> bool:
        """Does process ``pid`` hold the lock?"""
        holder = self.lock_holder() if os.path.isdir(self.path) else None
        return bool(holder) and int(holder.get("pid") or 0) == pid and holder.get("start") == process_start(pid)

    def check_lock(self, pid: int, rollout_id: str) -> None:
        if not self.holds(pid):
            holder = self.lock_holder()
            raise RolloutError(f"rollout {rollout_id}: this run does not hold the rollout's lock "
                               f"({'held by pid ' + str(holder.get('pid')) if holder else 'no lock'}); "
                               "the rollout playbook takes it in its first play")

    def release(self, pid: int) -> bool:
        if self.holds(pid):
            os.unlink(self.file("lock"))
            return True
        return False
