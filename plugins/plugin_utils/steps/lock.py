# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The lock step's decision: take or release ``/mnt/state/osfleet/hup.lock``, with the
compare-and-swap token the act script checks.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import (
    LEGACY_HELD,
    LOCK_PATH,
    DeviceClock,
    default_lock_owner,
    device_clock,
    in_progress,
    lock_interrupted,
    lock_text,
    lock_unreadable,
    may_take,
)


LOCK_NONE = "none"
LOCK_WRITE = "write"
#: the same run takes its lock again: only the refresh fields (boot_id, uptime) are written
LOCK_REFRESH = "refresh"
LOCK_REMOVE = "remove"
UNREADABLE_TOKEN = "?unreadable"
#: what the lock step returns of a lock (the refresh fields are the device's bookkeeping)
VIEW_KEYS = ("owner", "run_id", "since", "target", "interrupted")


@dataclass(frozen=True)
class LockArgs:
    """The lock module's options (defaults in its DOCUMENTATION; ``owner`` already defaulted)."""

    state: str
    owner: str
    run_id: str | None
    target: str | None
    stale_after: int
    force: bool
    #: check mode only: release the lock this run's state=present step would have taken (option assume_held)
    assume_held: bool = False

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], check_mode: bool = False) -> LockArgs:
        """``assume_held`` counts only in check mode (outside it the device's lock file is the truth)."""
        return cls(
            state=args["state"],
            owner=args.get("owner") or default_lock_owner(),
            run_id=args.get("run_id"),
            target=args.get("target_version"),
            stale_after=int(args["stale_after"]),
            force=bool(args["force"]),
            assume_held=bool(args.get("assume_held")) and check_mode,
        )


@dataclass
class LockPlan:
    op: str
    before: dict[str, t.Any] | None
    after: dict[str, t.Any] | None
    #: what the act script must still find in the lock file (compare-and-swap, see lock_token)
    expect: str
    actions: list[str] = field(default_factory=list)


def _jq_text(value: t.Any) -> str:
    """How jq's string interpolation renders a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def lock_token(lock: dict[str, t.Any] | None, unreadable: bool = False) -> str:
    """``owner|run_id|since`` of a lock file as the act script computes it with jq ("" when absent)."""
    if unreadable:
        return UNREADABLE_TOKEN
    if lock is None:
        return ""
    return "|".join(_jq_text(lock.get(k)) for k in ("owner", "run_id", "since"))


def _lock_view(lock: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    if lock is None:
        return None
    return {k: lock.get(k) for k in VIEW_KEYS}


def decide_lock(args: LockArgs, state: DeviceState, now: int | None = None) -> LockPlan:
    """Take or release ``/mnt/state/osfleet/hup.lock``. ``after['since']`` None means "now".

    The same run (owner and run id) takes its lock again (a refresh, or a resume after an
    interruption); another run of the same owner only a lock whose run was interrupted; any run a
    stale one (not refreshed for ``stale_after`` seconds by the device's uptime). PlanError (with
    the result keys ``lock`` and ``previous``: the holder) when another run holds it.
    """
    lock = state.lock
    clock = device_clock(state, now)
    unreadable = lock_unreadable(state)
    before = _lock_view(lock) if not unreadable else {"owner": "<unreadable lock file>", "run_id": None, "since": None, "target": None, "interrupted": None}
    plan = LockPlan(op=LOCK_NONE, before=before, after=before, expect=lock_token(lock, unreadable))
    held = {"lock": before, "previous": before}
    if args.state == "absent":
        return _decide_unlock(args, plan, lock, unreadable, clock)
    if state.legacy_lock_held:
        raise PlanError(LEGACY_HELD, **held)
    if unreadable and not args.force:
        raise PlanError(f"the update lock {LOCK_PATH} is unreadable; use force=true to replace it", **held)
    why = may_take(lock, args.owner, args.run_id, clock, args.stale_after) if lock is not None else None
    if lock is not None and why == "same run":
        wanted = dict(before or {}, interrupted=None)
        if args.run_id is not None:
            wanted["run_id"] = args.run_id
        if args.target is not None:
            wanted["target"] = args.target
        plan.after = wanted
        if wanted == before:
            plan.op = LOCK_REFRESH
            return plan
        plan.op = LOCK_WRITE
        if lock_interrupted(lock):
            marked = lock_interrupted(lock).get("reason")
            plan.actions.append(f"resumed the interrupted run {wanted.get('run_id')} of {args.owner} (its lock was marked: {marked})")
        else:
            plan.actions.append(f"updated the lock of {args.owner} (run {wanted.get('run_id')}, target {wanted.get('target')})")
        return plan
    if lock is not None and why is None and not args.force:
        raise PlanError(in_progress(lock, clock, args.stale_after), **held)
    plan.op = LOCK_WRITE
    plan.after = {"owner": args.owner, "run_id": args.run_id, "since": None, "target": args.target, "interrupted": None}
    if unreadable:
        plan.actions.append(f"replaced the unreadable lock file {LOCK_PATH} (force)")
    elif lock is not None:
        reason = {"interrupted": "its run was interrupted", "stale": f"stale: not refreshed for more than {args.stale_after} s"}.get(why or "", "force")
        plan.actions.append(f"took over the {lock_text(lock, clock)} ({reason})")
    plan.actions.append(f"took the update lock {LOCK_PATH} for {args.owner} (run {args.run_id or '-'})")
    return plan


def _decide_unlock(args: LockArgs, plan: LockPlan, lock: dict[str, t.Any] | None, unreadable: bool, clock: DeviceClock) -> LockPlan:
    if lock is None and not unreadable:
        if args.assume_held:  # check mode of a whole update: the lock this run's state=present step would hold
            plan.op, plan.after = LOCK_REMOVE, None
            plan.before = {"owner": args.owner, "run_id": args.run_id, "since": None, "target": args.target, "interrupted": None}
            plan.actions.append(f"released the update lock of {args.owner} (the one this run takes)")
        return plan
    ours = lock is not None and lock.get("owner") == args.owner and may_take(lock, args.owner, args.run_id, clock, args.stale_after) is not None
    if not ours and not args.force:
        held = lock_text(lock, clock) if lock is not None else f"the lock file {LOCK_PATH} is unreadable"
        raise PlanError(f"{held}, not by this run ({args.owner}, run {args.run_id or '-'}); use force=true to remove it",
                        lock=plan.before, previous=plan.before)
    plan.op, plan.after = LOCK_REMOVE, None
    owner = (lock or {}).get("owner", "<unreadable>")
    plan.actions.append(f"released the update lock of {owner}" + ("" if ours else " (force)"))
    return plan


def verify_lock(args: LockArgs, op: str, after: dict[str, t.Any] | None) -> str | None:
    """Why the re-probed lock is not what ``op`` made of it (None: it converged)."""
    if op == LOCK_REMOVE:
        return f"the lock is still held after removing it: {after}" if after is not None else None
    if after is None or after.get("owner") != args.owner or (args.run_id is not None and after.get("run_id") != args.run_id):
        return f"the lock is not held by {args.owner} (run {args.run_id or '-'}) after taking it: {after}"
    return None


def holder_text(lock: dict[str, t.Any] | None) -> str:
    """The lock as the diff shows it."""
    if not lock:
        return "(no lock)\n"
    shown = {k: lock.get(k) for k in ("owner", "run_id", "since", "target")}
    if lock.get("interrupted"):
        shown["interrupted"] = (lock.get("interrupted") or {}).get("reason") or "yes"
    if shown["since"] is None:
        shown["since"] = "(now)"
    return "".join(f"{k}: {'-' if v is None else v}\n" for k, v in shown.items())
