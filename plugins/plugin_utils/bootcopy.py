# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Putting a root's boot payload (``/resin-boot``) on the boot partition: the one copy plan of the
bootfiles step and of a rollback, its diff, and the checks that the release is staged.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import keepback
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import BOOT_MOUNT, TMP_SUFFIX, Op, finish_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import Listing, SwitchProbe


ACTIVE_SYSROOT = "/mnt/sysroot/active"
INACTIVE_SYSROOT = "/mnt/sysroot/inactive"
PAYLOAD_DIR = "resin-boot"


@dataclass
class BootCopy:
    """A boot files copy: the keepback plan, the file operations and the names written."""

    plan: keepback.BootfilesPlan
    ops: list[Op]
    dst_names: dict[str, str]
    stale_tmp: list[str]
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.ops)


def _boot_view(boot: Mapping[str, keepback.FileInfo], payload: Iterable[str]) -> tuple[dict[str, keepback.FileInfo], dict[str, str]]:
    """The boot partition as the plan sees it, and the name each payload path is written to.

    The boot partition is vfat on real devices: ``EFI/BOOT/X`` and ``efi/boot/x`` are the same
    file there. A payload path matching an existing name case-insensitively is compared with and
    written to that existing name. Env files and stale temporaries are left out.
    """
    folded: dict[str, str] = {}
    for name in sorted(boot):
        folded.setdefault(name.casefold(), name)
    view = {name: info for name, info in boot.items() if name not in keepback.ENV_FILES and not name.endswith(TMP_SUFFIX)}
    dst: dict[str, str] = {}
    for path in payload:
        existing = path if path in boot else folded.get(path.casefold())
        dst[path] = existing or path
        if existing and existing != path and existing in view:
            view[path] = view.pop(existing)
    return view, dst


def space_message(plan: keepback.BootfilesPlan, free_bytes: int) -> str:
    need = free_bytes - plan.low_water + plan.reserve
    return (
        f"boot partition too small: needs {-(-need // 1024)} KiB, has {free_bytes // 1024} KiB free "
        f"(keeps {plan.reserve // 1024} KiB reserve)"
    )


def plan_boot_copy(
    src_dir: str,
    payload: Listing,
    boot: Listing,
    free_bytes: int,
    *,
    reserve: int,
    extra_keep: Iterable[str] = (),
    what: str = "the new OS",
    fingerprint: bool = True,
    leaving: Listing | None = None,
    block_size: int = 1,
) -> BootCopy:
    """Plan putting the ``payload`` (a root's ``/resin-boot``, at ``src_dir`` on the device) on the
    boot partition; the one copy logic of both the bootfiles step and the rollback.

    Raises PlanError when the payload holds entries that cannot be copied, or when the space
    check fails (nothing is written then). ``fingerprint=False`` writes the fingerprint only
    together with copied files (a rollback does not rewrite it on an otherwise untouched partition).
    ``leaving``: the payload of the OS the device leaves (a rollback): the files it brought that
    ``payload`` does not have are deleted, unless kept back, so the partition is the old one again.
    ``block_size``: the boot partition's allocation unit (the space check counts whole blocks).
    """
    if payload.bad:
        raise PlanError(f"{what}'s /{PAYLOAD_DIR} holds entries that cannot be copied to the boot partition: {', '.join(repr(b) for b in payload.bad[:5])}")
    if not payload.files:
        raise PlanError(f"{what}'s /{PAYLOAD_DIR} holds no files")
    extra_keep = tuple(extra_keep)
    view, dst_names = _boot_view(boot.files, payload.files)
    remove = _leftovers(leaving, payload, view, extra_keep)
    for name in remove:
        del view[name]
    try:
        plan = keepback.plan_bootfiles(payload.files, view, free_bytes, reserve=reserve, extra_keep=extra_keep, block_size=block_size)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    if not plan.fits:
        raise PlanError(space_message(plan, free_bytes))
    ops: list[Op] = []
    stale = sorted(name for name in boot.files if name.endswith(TMP_SUFFIX))
    ops.extend(("del", f"{BOOT_MOUNT}/{name}", "") for name in stale)
    ops.extend(("copy", f"{BOOT_MOUNT}/{dst_names[path]}", f"{src_dir}/{path}") for path in plan.copy)
    ops.extend(("del", f"{BOOT_MOUNT}/{name}", "") for name in remove)
    if plan.fingerprint_changed and (fingerprint or plan.copy or remove):
        ops.append(("put", f"{BOOT_MOUNT}/{keepback.FINGERPRINT_FILE}", plan.fingerprint))
    return BootCopy(plan=plan, ops=finish_ops(ops), dst_names=dst_names, stale_tmp=stale, removed=remove)


def _leftovers(leaving: Listing | None, payload: Listing, view: Mapping[str, keepback.FileInfo], extra_keep: tuple[str, ...]) -> list[str]:
    """Boot-partition files that the leaving OS's payload brought and the target payload lacks
    (matched case-insensitively, as on vfat); keep-back files and the fingerprint never count."""
    if leaving is None:
        return []
    target = {path.casefold() for path in payload.files}
    brought = {path.casefold() for path in leaving.files if path != keepback.FINGERPRINT_FILE}
    return sorted(
        name for name in view
        if name.casefold() in brought and name.casefold() not in target and keepback.rule_for(name, extra_keep) == keepback.RULE_COPY
    )


def bootfiles_diff(copy: BootCopy, payload: Listing, boot: Listing) -> dict[str, str]:
    """``path  sha256`` lines of every file the copy writes, before and after."""
    before, after = [], []
    for path in copy.plan.copy:
        old = boot.files.get(copy.dst_names[path])
        before.append(f"{copy.dst_names[path]}  {old.sha256 if old else '(absent)'}\n")
        after.append(f"{copy.dst_names[path]}  {payload.files[path].sha256}\n")
    if any(op[1].endswith("/" + keepback.FINGERPRINT_FILE) for op in copy.ops):
        old = boot.files.get(keepback.FINGERPRINT_FILE)
        before.append(f"{keepback.FINGERPRINT_FILE}  {old.sha256 if old else '(absent)'}\n")
        after.append(f"{keepback.FINGERPRINT_FILE}  (regenerated)\n")
    for name in copy.removed:
        before.append(f"{name}  {boot.files[name].sha256}\n")
        after.append(f"{name}  (absent)\n")
    for name in copy.stale_tmp:
        if any(op == ("del", f"{BOOT_MOUNT}/{name}", "") for op in copy.ops):
            before.append(f"{name}  (stale temporary)\n")
            after.append(f"{name}  (absent)\n")
    header = f"# boot files on {BOOT_MOUNT}\n"
    return {"before": header + "".join(before), "after": header + "".join(after)}


def need_listing(probe: SwitchProbe) -> tuple[Listing, int]:
    if probe.boot is None or probe.boot_free_bytes is None:
        raise PlanError("the probe did not list the boot partition (cannot read its files or free space)")
    return probe.boot, probe.boot_free_bytes


#: the free space a rollback's copy of the old boot files keeps (bytes): it does not fail for the
#: last few KiB the bootfiles step's reserve_kib kept (fs metadata, long-name entries of the
#: temporaries), yet is planned with the same model as the copy it undoes (see keepback)
ROLLBACK_RESERVE = 64 * 1024


def payload_of(probe: SwitchProbe, side: str, label: str) -> Listing:
    listing = probe.payloads.get(side)
    if listing is None or not listing.present:
        raise PlanError(f"the {side} root ({label}) has no /{PAYLOAD_DIR} directory")
    return listing


def staged_stamp(dev: DeviceState, expected_digest: str | None = None) -> dict[str, t.Any]:
    stamp = dev.inactive_stamp
    if not stamp or not stamp.get("digest"):
        raise NotStaged(f"the inactive root ({dev.inactive_label}) holds no verified release; run osfleet.hup.rootfs first")
    if expected_digest and stamp.get("digest") != expected_digest:
        raise NotStaged(
            f"the inactive root ({dev.inactive_label}) holds {stamp.get('version', '?')} ({stamp.get('digest')}), "
            f"not the expected {expected_digest}; run osfleet.hup.rootfs first"
        )
    return stamp


def check_extra_keep(extra_keep: Iterable[str]) -> tuple[str, ...]:
    out = []
    for pattern in extra_keep:
        try:
            keepback.check_path(pattern[:-1] if pattern.endswith("/") else pattern)
        except ValueError as exc:
            raise PlanError(f"extra_keep: {exc}") from None
        out.append(pattern)
    return tuple(out)


def plan_inactive_copy(dev: DeviceState, probe: SwitchProbe, stamp: t.Mapping[str, t.Any], *, reserve: int,
                       extra_keep: Iterable[str]) -> tuple[BootCopy, Listing, Listing, str]:
    """The copy of the new release's boot files (the inactive root's payload) onto the boot partition:
    the copy, the payload, the boot partition's listing and how the payload is named in messages."""
    boot, free = need_listing(probe)
    payload = payload_of(probe, "inactive", dev.inactive_label)
    what = f"the inactive root ({dev.inactive_label}, {stamp.get('version', '?')})"
    copy = plan_boot_copy(f"{INACTIVE_SYSROOT}/{PAYLOAD_DIR}", payload, boot, free, reserve=reserve, extra_keep=check_extra_keep(extra_keep), what=what,
                          block_size=probe.boot_block_size)
    return copy, payload, boot, what


def previous_release_problem(*, hostapp: bool, label: str, stamp: t.Mapping[str, t.Any] | None, image_id: str,
                             version: str, expected_image_id: str = "", expected_digest: str = "") -> str | None:
    """Why the spare root ``label`` does not verifiably hold release ``version`` any more (a revert
    to the release it ran before), or None when it does.

    A balenaOS (hostapp) partition is identified by its hostapp's image id (``image_id``, from its
    ``current`` link and that container's config): it must equal ``expected_image_id`` when the
    caller recorded it; otherwise the partition's release stamp must name ``version`` and that very
    image id. A plain A/B root is identified by its release stamp: ``version``, and
    ``expected_digest`` when given. Pure: the values come from the device probe."""
    stamp = dict(stamp or {})
    named = f"{stamp.get('version')} ({stamp.get('digest') or 'no digest'})" if stamp else "no release stamp"
    if hostapp:
        if not image_id:
            return f"the other root partition {label} holds no complete hostapp (stamp: {named}), not {version}"
        if expected_image_id:
            if image_id != expected_image_id:
                return (f"the other root partition {label} was rewritten: its hostapp is image {image_id}, "
                        f"not {expected_image_id} ({version}, as it ran before the update)")
            return None
        if stamp.get("version") != version or stamp.get("image_id") != image_id:
            return (f"cannot verify that the other root partition {label} holds {version}: its hostapp is image {image_id} "
                    f"and its stamp names {named}{'' if stamp.get('image_id') == image_id else ' for another image'}")
        return None
    if not stamp:
        return f"the other root partition {label} has no release stamp: cannot verify that it holds {version}"
    if stamp.get("version") != version:
        return f"the other root partition {label} was rewritten: its stamp names {named}, not {version}"
    if expected_digest and stamp.get("digest") != expected_digest:
        return f"the other root partition {label} was rewritten: its stamp names {named}, not {version} ({expected_digest})"
    return None
