# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""File operations on the boot and state partitions: the plans of the switch steps (bootfiles,
bootenv, health) are lists of them, carried out by one script (``scripts/apply.sh``).

Operations are triples ``(op, destination, value)``:

* ``("put", dst, content)``: write ``content`` to ``dst`` (atomically: temporary file, sync, rename);
* ``("copy", dst, src)``: copy the file ``src`` to ``dst`` (same way);
* ``("del", dst, "")``: remove ``dst``.

Destinations are always below ``/mnt/boot/`` or ``/mnt/state/``.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import keepback
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession


Op = tuple[str, str, str]
BOOT_MOUNT = "/mnt/boot"
STATE_MOUNT = "/mnt/state"
TMP_SUFFIX = keepback.TMP_SUFFIX


@dataclass
class SwitchPlan:
    """Operations, plain sentences, a diff and result keys of one step's decision.

    ``pending``: a change that cannot be planned in detail yet (check mode, an earlier step has
    not run); it counts as a change.
    """

    ops: list[Op] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    diff: dict[str, str] | None = None
    data: dict[str, t.Any] = field(default_factory=dict)
    msg: str = ""
    pending: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.ops) or bool(self.pending)

    def extend(self, other: SwitchPlan) -> None:
        self.ops.extend(other.ops)
        self.actions.extend(other.actions)
        self.data.update(other.data)
        if other.diff:
            before = (self.diff or {}).get("before", "") + other.diff.get("before", "")
            after = (self.diff or {}).get("after", "") + other.diff.get("after", "")
            self.diff = {"before": before, "after": after}


def finish_ops(ops: Iterable[Op]) -> list[Op]:
    """Drop removals of temporaries that the same plan writes anew (a stale ``x.osfleet-tmp``
    left by an interrupted run is overwritten by the new one anyway)."""
    ops = list(ops)
    staged = {dst + TMP_SUFFIX for op, dst, _value in ops if op in ("put", "copy")}
    return [op for op in ops if not (op[0] == "del" and op[1] in staged)]


def validate_ops(ops: Iterable[Op]) -> None:
    """Refuse operations outside the boot and state partitions or with unsafe values."""
    for op, dst, value in ops:
        if op not in ("put", "copy", "del"):
            raise PlanError(f"internal error: unknown file operation {op!r}")
        if not dst.startswith((BOOT_MOUNT + "/", STATE_MOUNT + "/")):
            raise PlanError(f"internal error: refusing to write {dst!r} (outside {BOOT_MOUNT} and {STATE_MOUNT})")
        keepback.check_path(dst.lstrip("/"))
        if "\0" in value:
            raise PlanError(f"internal error: {dst!r}: NUL in the content")
        if op == "copy":
            keepback.check_path(value.lstrip("/"))


def apply_ops(session: DeviceSession, ops: list[Op], what: str = "writing the files") -> None:
    """Carry out file operations on the device (one round trip)."""
    if not ops:
        return
    validate_ops(ops)
    session.run("apply", ops=[list(op) for op in ops], what=what)
