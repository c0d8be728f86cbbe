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
module) on one controller (its host name): it holds from the rollout's first play to its last,
across the plays' workers, and the run refreshes it as it goes (:data:`REFRESH_EVERY`). A lock of
this controller whose process is gone (or is another process with the same pid: its start time
differs) is stale and taken over. A lock of another controller (two controllers sharing one
``hup_rollout_dir``, e.g. on NFS) names a process this one cannot see: it holds until it has not
been refreshed for the stale bound (``hup_rollout_lock_stale_after``), or until it is released
(its run ends, or the operator removes the file) (:func:`judge_lock`). A start that fails after
taking the lock releases it (plugins/action/rollout.py).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import typing as t
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.localfile import write_atomic
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso, parse_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import RolloutError


#: a lock of another controller not refreshed for this long is stale (seconds; hup_rollout_lock_stale_after)
LOCK_STALE_AFTER = 43200
#: the run refreshes its lock when it is older than this (seconds), at each phase that checks it
REFRESH_EVERY = 60


@dataclass(frozen=True)
class LockVerdict:
    """What a start does with the lock it finds: ``free`` (none), ``mine`` (this run's, a later
    play), ``held`` (refused, ``text`` the error) or ``stale`` (taken over, ``text`` the note)."""

    kind: str
    text: str = ""


def _age(holder: Mapping[str, t.Any], now: float) -> float | None:
    """Seconds since the lock was last refreshed (taken, for a lock without ``refreshed``); None
    when its times cannot be read."""
    when = holder.get("refreshed") or holder.get("since")
    try:
        moment = parse_iso(when) if isinstance(when, str) else None
    except ValueError:
        return None
    return None if moment is None else max(0.0, now - moment)


def judge_lock(holder: Mapping[str, t.Any] | None, *, pid: int, start: str | None, host: str, holder_start: str | None,
               now: float, stale_after: int, rollout_id: str, path: str) -> LockVerdict:
    """The lock ``holder`` (None: there is none) as run ``pid`` (its process ``start``) on
    controller ``host`` finds it; ``holder_start`` is the start time of the holder's pid on this
    controller (None: no such process here). A lock of this controller (or one that names none)
    is judged by its process: this run's, another live run's, or stale. A lock of another
    controller cannot be: it is held until it has not been refreshed for ``stale_after`` seconds."""
    if not holder:
        return LockVerdict("free")
    hpid, controller = int(holder.get("pid") or 0), str(holder.get("controller") or "")
    who = f"ansible-playbook pid {holder.get('pid')} of {holder.get('user')}@{controller or '?'} since {holder.get('since')}"
    if not controller or controller == host:
        if hpid == pid and holder.get("start") == start:
            return LockVerdict("mine")
        if holder_start == holder.get("start") and holder_start is not None:
            return LockVerdict("held", f"rollout {rollout_id} is driven by another run: {who}; wait for it to end (two runs never "
                                       "drive one rollout)")
        return LockVerdict("stale", f"took over the lock of a run that ended without releasing it (pid {holder.get('pid')}, "
                                    f"since {holder.get('since')})")
    age = _age(holder, now)
    if age is not None and stale_after > 0 and age > stale_after:
        return LockVerdict("stale", f"took over the lock of a run on another controller, {controller} (pid {holder.get('pid')}, "
                                    f"since {holder.get('since')}): not refreshed for {int(age)} s, more than {stale_after} s "
                                    "(hup_rollout_lock_stale_after)")
    refreshed = f"its lock refreshed {int(age)} s ago" if age is not None else "its lock's age unknown"
    bound = (f"until it has not been refreshed for {stale_after} s (hup_rollout_lock_stale_after)" if stale_after > 0
             else "until it is released (hup_rollout_lock_stale_after is 0)")
    return LockVerdict("held", f"rollout {rollout_id} is driven by a run on another controller, {controller} ({who}, {refreshed}): "
                               f"this controller, {host}, cannot see that run's process, so its lock holds {bound}; wait for that "
                               f"run to end, or, if it is gone, remove {path}")


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

    def _verdict(self, pid: int, rollout_id: str, stale_after: int = LOCK_STALE_AFTER) -> LockVerdict:
        holder = self.lock_holder() if os.path.isdir(self.path) else None
        return judge_lock(holder, pid=pid, start=process_start(pid), host=socket.gethostname(),
                          holder_start=process_start(int(holder.get("pid") or 0)) if holder else None, now=time.time(),
                          stale_after=stale_after, rollout_id=rollout_id, path=self.file("lock"))

    def acquire(self, pid: int, rollout_id: str, stale_after: int = LOCK_STALE_AFTER) -> str | None:
        """Take the lock for process ``pid``; a note when a stale lock was taken over. Raises when
        another live run holds it, or a run of another controller (:func:`judge_lock`)."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        verdict = self._verdict(pid, rollout_id, stale_after)
        if verdict.kind == "mine":
            return None
        if verdict.kind == "held":
            raise RolloutError(verdict.text)
        stale = verdict.kind == "stale"
        note = verdict.text or None
        now = iso(time.time())
        mine = {"pid": pid, "start": process_start(pid), "user": operator(), "controller": socket.gethostname(),
                "since": now, "refreshed": now}
        if stale:
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
        """Does process ``pid`` of this controller hold the lock?"""
        return self._verdict(pid, "").kind == "mine"

    def check_lock(self, pid: int, rollout_id: str) -> None:
        """Refuse a phase of a run that does not hold the lock; refresh the lock of one that does
        (when older than :data:`REFRESH_EVERY`: another controller judges it by that)."""
        if not self.holds(pid):
            holder = self.lock_holder()
            raise RolloutError(f"rollout {rollout_id}: this run does not hold the rollout's lock "
                               f"({'held by pid ' + str(holder.get('pid')) + ' of ' + str(holder.get('controller')) if holder else 'no lock'}); "
                               "the rollout playbook takes it in its first play")
        holder = self.lock_holder() or {}
        age = _age(holder, time.time())
        if age is None or age > REFRESH_EVERY:
            self.save("lock", {**holder, "refreshed": iso(time.time())})

    def release(self, pid: int) -> bool:
        if self.holds(pid):
            os.unlink(self.file("lock"))
            return True
        return False
