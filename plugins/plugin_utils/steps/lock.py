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
from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import LEGACY_LOCK, LOCK_PATH, lock_is_stale, lock_text


LOCK_NONE = "none"
LOCK_WRITE = "write"
LOCK_REMOVE = "remove"


@dataclass(frozen=True)
class LockArgs:
    state: str = "present"
    owner: str = ""
    run_id: str | None = None
    target: str | None = None
    stale_after: int = 7200
    force: bool = False


UNREADABLE_TOKEN = "?unreadable"


@dataclass
class LockPlan:
    op: str
    before: dict[str, t.Any] | None
    after: dict[str, t.Any] | None
    #: what the act script must still find in the lock file (compare-and-swap, see lock_token)
    expect: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None


def _jq_text(value: t.Any) -> str:
    """How jq's string interpolation renders a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def lock_token(lock: dict[str, t.Any] | None, unreadable: bool = False) -> str:
    """``owner|since`` of a lock file as the act script computes it with jq ("" when absent)."""
    if unreadable:
        return UNREADABLE_TOKEN
    if lock is None:
        return ""
    return f"{_jq_text(lock.get('owner'))}|{_jq_text(lock.get('since'))}"


def _lock_view(lock: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    if lock is None:
        return None
    return {k: lock.get(k) for k in ("owner", "run_id", "since", "target")}


def decide_lock(args: LockArgs, state: DeviceState, now: int | None = None) -> LockPlan:
    """Take or release ``/mnt/state/osfleet/hup.lock``. ``after['since']`` None means "now"."""
    lock = state.lock
    unreadable = lock is None and bool(str(state.raw.get("lock", "")).strip())
    before = _lock_view(lock) if not unreadable else {"owner": "<unreadable lock file>", "run_id": None, "since": None, "target": None}
    plan = LockPlan(op=LOCK_NONE, before=before, after=before, expect=lock_token(lock, unreadable))
    if args.state == "absent":
        return _decide_unlock(args, plan, lock, unreadable)
    if state.legacy_lock_held:
        plan.error = f"update already in progress: {LEGACY_LOCK} is held (another updater runs)"
        return plan
    if lock is not None and lock.get("owner") == args.owner:
        wanted = dict(before or {})
        if args.run_id is not None:
            wanted["run_id"] = args.run_id
        if args.target is not None:
            wanted["target"] = args.target
        if wanted != before:
            plan.op, plan.after = LOCK_WRITE, wanted
            plan.actions.append(f"updated the lock of {args.owner} (run {wanted.get('run_id')}, target {wanted.get('target')})")
        return plan
    if unreadable and not args.force:
        plan.error = f"the update lock {LOCK_PATH} is unreadable; use force=true to replace it"
        return plan
    if lock is not None and not args.force and not lock_is_stale(lock, now, args.stale_after):
        plan.error = f"update already in progress: {lock_text(lock)}"
        return plan
    plan.op = LOCK_WRITE
    plan.after = {"owner": args.owner, "run_id": args.run_id, "since": None, "target": args.target}
    if unreadable:
        plan.actions.append(f"replaced the unreadable lock file {LOCK_PATH} (force)")
    elif lock is not None:
        why = "force" if args.force else f"stale: older than {args.stale_after} s"
        plan.actions.append(f"took over the {lock_text(lock)} ({why})")
    plan.actions.append(f"took the update lock {LOCK_PATH} for {args.owner}")
    return plan


def _decide_unlock(args: LockArgs, plan: LockPlan, lock: dict[str, t.Any] | None, unreadable: bool) -> LockPlan:
    if lock is None and not unreadable:
        return plan
    if (lock or {}).get("owner") != args.owner and not args.force:
        held = lock_text(lock) if lock is not None else f"the lock file {LOCK_PATH} is unreadable"
        plan.error = f"{held}, not by {args.owner}; use force=true to remove it"
        return plan
    plan.op, plan.after = LOCK_REMOVE, None
    owner = (lock or {}).get("owner", "<unreadable>")
    plan.actions.append(f"released the update lock of {owner}" + (" (force)" if owner != args.owner else ""))
    return plan
