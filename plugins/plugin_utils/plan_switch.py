# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure decisions of the switch steps: bootfiles, bootenv, reboot, health.

Nothing here does I/O. Every function takes what the probe read (a ``DeviceState`` and the
switch probe of :mod:`switch`, parsed into :class:`SwitchProbe`) and returns a plan: a list of
file operations for the one act script (``put``/``copy``/``del``, see :data:`Op`), plain
sentences for ``actions``, and a diff. The same functions verify a step: after the act, the
re-probed device must give an empty plan.

File operations are triples ``(op, destination, value)``:

* ``("put", dst, content)``: write ``content`` to ``dst`` (atomically: temporary file, sync, rename);
* ``("copy", dst, src)``: copy the file ``src`` to ``dst`` (same way);
* ``("del", dst, "")``: remove ``dst``.

Destinations are always below ``/mnt/boot/`` or ``/mnt/state/``.
"""

from __future__ import annotations

import json
import re
import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv, keepback
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version

Op = tuple[str, str, str]

BOOT_MOUNT = "/mnt/boot"
STATE_MOUNT = "/mnt/state"
ACTIVE_SYSROOT = "/mnt/sysroot/active"
INACTIVE_SYSROOT = "/mnt/sysroot/inactive"
PAYLOAD_DIR = "resin-boot"
TMP_SUFFIX = keepback.TMP_SUFFIX
ROLLBACK_MARKER = "osfleet-rollback"
HEALTH_VARIABLES = "BALENAOS_ROLLBACK_VPNONLINE=0\n"

HEALTH_BREADCRUMB = "rollback-health-breadcrumb"
ALTBOOT_BREADCRUMB = "rollback-altboot-breadcrumb"
HEALTH_VARIABLES_FILE = "rollback-health-variables"
HEALTH_TRIGGERED = "rollback-health-triggered"
ALTBOOT_TRIGGERED = "rollback-altboot-triggered"
HEALTH_FAILED = "rollback-health-failed"
BREADCRUMBS = (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB)
#: what rollback-stop removes (facts §9.8); the *-triggered markers survive it
STOP_REMOVES = (HEALTH_VARIABLES_FILE, ALTBOOT_BREADCRUMB, HEALTH_BREADCRUMB, HEALTH_FAILED)
#: what arming removes (hook 80-rollback with DURING_UPDATE=1), plus osfleet's own rollback marker
ARM_REMOVES = (HEALTH_TRIGGERED, ALTBOOT_TRIGGERED, HEALTH_FAILED, ROLLBACK_MARKER)
#: bootloader env files: written by the bootenv step and the bootloader, never by bootfiles, and
#: left out of the boot-partition fingerprint so that arming or a boot does not make it stale
ENV_FILES = keepback.ENV_FILES

REASONS = {
    "altboot": "the new OS did not boot",
    "health": "the device's health checks failed",
    "checks": "the health commands failed",
    "requested": "a rollback was requested",
}


# --- the switch probe --------------------------------------------------------------------------

@dataclass(frozen=True)
class Listing:
    """Regular files below one directory (``path -> FileInfo``) and entries that cannot be copied."""

    files: dict[str, keepback.FileInfo] = field(default_factory=dict)
    bad: tuple[str, ...] = ()
    present: bool = True


@dataclass(frozen=True)
class SwitchProbe:
    """What the switch probe read besides the common device probe."""

    bootcount_present: bool = False
    health_variables: str | None = None
    rollback_marker: dict[str, t.Any] | None = None
    boot_free_bytes: int | None = None
    boot: Listing | None = None
    payloads: dict[str, Listing] = field(default_factory=dict)

    @property
    def listed(self) -> bool:
        return self.boot is not None


_SHA_LINE = re.compile(r"^([0-9a-f]{64})  \./(.+)$")
_MD5_LINE = re.compile(r"^([0-9a-f]{32})  \./(.+)$")
_SIZE_LINE = re.compile(r"^(\d+) \./(.+)$")


def parse_listing(sha_text: str, size_text: str, other_text: str = "", present: bool = True, md5_text: str = "") -> Listing:
    """Merge ``sha256sum`` lines and ``stat -c '%s %n'`` lines (paths ``./x``) into a :class:`Listing`.

    ``md5sum`` lines (``md5_text``) only add the md5 that the fingerprint is made of; a file
    they lack keeps an empty md5 (the fingerprint then uses its sha256) and is not bad.

    A name with a line break breaks its lines apart; the probe also prints such names in
    ``other_text``, with the non-regular entries (dangling symlinks, devices, ...). Those, broken
    lines and paths that :func:`keepback.check_path` refuses end up in ``bad``.
    """
    bad: list[str] = []
    shas: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for line in sha_text.splitlines():
        match = _SHA_LINE.match(line)
        if match:
            shas[match.group(2)] = match.group(1)
        elif line.strip():
            bad.append(line.strip())
    md5s = {match.group(2): match.group(1) for match in map(_MD5_LINE.match, md5_text.splitlines()) if match}
    for line in size_text.splitlines():
        match = _SIZE_LINE.match(line)
        if match:
            sizes[match.group(2)] = int(match.group(1))
        elif line.strip():
            bad.append(line.strip())
    files: dict[str, keepback.FileInfo] = {}
    for path in sorted(set(shas) | set(sizes)):
        if path not in shas or path not in sizes:
            bad.append(path)
            continue
        try:
            keepback.check_path(path)
        except ValueError:
            bad.append(path)
            continue
        files[path] = keepback.FileInfo(shas[path], sizes[path], md5s.get(path, ""))
    for line in other_text.splitlines():
        if line.strip():
            bad.append(line.strip().removeprefix("./"))
    # the first line of a name with a line break looks like a file of its own: drop it
    files = {path: info for path, info in files.items() if path not in bad}
    return Listing(files=files, bad=tuple(dict.fromkeys(bad)), present=present)


def _json_dict(text: str) -> dict[str, t.Any] | None:
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"reason": "unknown", "raw": text.strip()[:200]}
    return data if isinstance(data, dict) else {"reason": "unknown", "raw": text.strip()[:200]}


def parse_switch_probe(raw: Mapping[str, t.Any]) -> SwitchProbe:
    """Turn the switch probe's JSON (``DeviceState.extra``) into a :class:`SwitchProbe`."""
    listed = raw.get("listed") == "1"
    boot = payloads = None
    free = None
    if listed:
        boot = parse_listing(raw.get("boot_sha", ""), raw.get("boot_size", ""), raw.get("boot_other", ""), md5_text=raw.get("boot_md5", ""))
        payloads = {
            side: parse_listing(
                raw.get(f"{side}_sha", ""), raw.get(f"{side}_size", ""), raw.get(f"{side}_other", ""), raw.get(f"{side}_present") == "1",
                raw.get(f"{side}_md5", ""),
            )
            for side in ("active", "inactive")
        }
        parts = str(raw.get("boot_statfs", "")).split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            free = int(parts[0]) * int(parts[1])
    return SwitchProbe(
        bootcount_present=raw.get("bootcount_present") == "1",
        health_variables=raw.get("health_variables") if raw.get("health_variables_present") == "1" else None,
        rollback_marker=_json_dict(str(raw.get("rollback_marker", ""))) if raw.get("rollback_marker_present") == "1" else None,
        boot_free_bytes=free,
        boot=boot,
        payloads=payloads or {},
    )


# --- plans ---------------------------------------------------------------------------------------

class NotStaged(PlanError):
    """A step that comes earlier in the update has not run (no stamp, boot files not copied).

    In check mode those steps did not write anything, so the later steps plan as if they had
    (``assume_staged``) and say so, instead of failing: ``--check`` shows the whole update.
    """


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


# --- boot files ----------------------------------------------------------------------------------

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
    view = {name: info for name, info in boot.items() if name not in ENV_FILES and not name.endswith(TMP_SUFFIX)}
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
    reserve: int = keepback.DEFAULT_RESERVE,
    extra_keep: Iterable[str] = (),
    what: str = "the new OS",
    fingerprint: bool = True,
    leaving: Listing | None = None,
) -> BootCopy:
    """Plan putting the ``payload`` (a root's ``/resin-boot``, at ``src_dir`` on the device) on the
    boot partition; the one copy logic of both the bootfiles step and the rollback.

    Raises PlanError when the payload holds entries that cannot be copied, or when the space
    check fails (nothing is written then). ``fingerprint=False`` writes the fingerprint only
    together with copied files (a rollback does not rewrite it on an otherwise untouched partition).
    ``leaving``: the payload of the OS the device leaves (a rollback): the files it brought that
    ``payload`` does not have are deleted, unless kept back, so the partition is the old one again.
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
        plan = keepback.plan_bootfiles(payload.files, view, free_bytes, reserve=reserve, extra_keep=extra_keep)
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


def _need_listing(probe: SwitchProbe) -> tuple[Listing, int]:
    if probe.boot is None or probe.boot_free_bytes is None:
        raise PlanError("the probe did not list the boot partition (cannot read its files or free space)")
    return probe.boot, probe.boot_free_bytes


def _payload(probe: SwitchProbe, side: str, label: str) -> Listing:
    listing = probe.payloads.get(side)
    if listing is None or not listing.present:
        raise PlanError(f"the {side} root ({label}) has no /{PAYLOAD_DIR} directory")
    return listing


def _stamp_or_fail(dev: t.Any, expected_digest: str | None = None) -> dict[str, t.Any]:
    stamp = dev.inactive_stamp
    if not stamp or not stamp.get("digest"):
        raise NotStaged(f"the inactive root ({dev.inactive_label}) holds no verified release; run osfleet.hup.rootfs first")
    if expected_digest and stamp.get("digest") != expected_digest:
        raise NotStaged(
            f"the inactive root ({dev.inactive_label}) holds {stamp.get('version', '?')} ({stamp.get('digest')}), "
            f"not the expected {expected_digest}; run osfleet.hup.rootfs first"
        )
    return stamp


def _check_extra_keep(extra_keep: Iterable[str]) -> tuple[str, ...]:
    out = []
    for pattern in extra_keep:
        try:
            keepback.check_path(pattern[:-1] if pattern.endswith("/") else pattern)
        except ValueError as exc:
            raise PlanError(f"extra_keep: {exc}") from None
        out.append(pattern)
    return tuple(out)


def decide_bootfiles(dev: t.Any, probe: SwitchProbe, *, extra_keep: Iterable[str] = (), reserve_kib: int = 512,
                     expected_digest: str | None = None, assume_staged: bool = False) -> SwitchPlan:
    """The bootfiles step: the boot partition gets the inactive root's payload, except keep-back files.

    ``assume_staged`` (check mode): when the inactive root does not hold the release yet, report
    the copy as pending instead of failing.
    """
    if reserve_kib < 0:
        raise PlanError(f"reserve_kib must not be negative, got {reserve_kib}")
    extra_keep = _check_extra_keep(extra_keep)
    try:
        stamp = _stamp_or_fail(dev, expected_digest)
    except NotStaged as exc:
        if not assume_staged:
            raise
        note = f"copy the new release's boot files once osfleet.hup.rootfs has written it ({exc})"
        return SwitchPlan(actions=[note], pending=note,
                          data={"copied": [], "kept_back": [], "unchanged": [], "needed_kib": 0, "free_after_kib": 0, "release": {}})
    boot, free = _need_listing(probe)
    payload = _payload(probe, "inactive", dev.inactive_label)
    what = f"the inactive root ({dev.inactive_label}, {stamp.get('version', '?')})"
    copy = plan_boot_copy(
        f"{INACTIVE_SYSROOT}/{PAYLOAD_DIR}", payload, boot, free, reserve=reserve_kib * 1024, extra_keep=extra_keep, what=what
    )
    plan = SwitchPlan(ops=copy.ops)
    for path in copy.plan.copy:
        verb = "replace" if copy.dst_names[path] in boot.files else "add"
        plan.actions.append(f"{verb} {BOOT_MOUNT}/{copy.dst_names[path]} from {what}")
    if any(op[0] == "put" for op in copy.ops):
        plan.actions.append(f"regenerate {BOOT_MOUNT}/{keepback.FINGERPRINT_FILE}")
    if copy.stale_tmp:
        plan.actions.extend(f"remove stale temporary {BOOT_MOUNT}/{name}" for name in copy.stale_tmp if ("del", f"{BOOT_MOUNT}/{name}", "") in copy.ops)
    if plan.ops:
        plan.diff = bootfiles_diff(copy, payload, boot)
    plan.data = {
        "copied": [copy.dst_names[p] for p in copy.plan.copy],
        "kept_back": list(copy.plan.kept_back),
        "unchanged": list(copy.plan.unchanged),
        "needed_kib": -(-copy.plan.needed_bytes // 1024),
        "free_after_kib": copy.plan.free_after // 1024,
        "release": {k: stamp.get(k) for k in ("version", "digest", "device_type") if k in stamp},
    }
    return plan


# --- bootloader env ------------------------------------------------------------------------------

def env_files(dev: t.Any, probe: SwitchProbe) -> dict[str, bootenv.FileContent]:
    """The env files on the boot partition (``name -> content``, None when absent)."""
    if dev.uenv_text is not None:
        return {
            bootenv.UBOOT_ENV_FILE: dev.uenv_text,
            bootenv.BOOTCOUNT_FILE: dev.bootcount_text if probe.bootcount_present else None,
        }
    if dev.grubenv_path:
        name = dev.grubenv_path.removeprefix(BOOT_MOUNT + "/")
        if name not in bootenv.GRUBENV_FILES:
            raise PlanError(f"unsupported bootloader env {dev.grubenv_path} (only u-boot resinOS_uEnv.txt and GRUB grubenv are supported)")
        return {name: dev.grubenv_text}
    raise PlanError(f"no bootloader env on the boot partition (neither {bootenv.UBOOT_ENV_FILE} nor a grubenv)")


def current_boot_state(dev: t.Any, probe: SwitchProbe) -> tuple[bootenv.BootState, dict[str, bootenv.FileContent]]:
    files = env_files(dev, probe)
    try:
        return bootenv.state_from_boot_files({**files, bootenv.EXTRA_UENV_FILE: dev.extra_uenv_text or None}), files
    except ValueError as exc:
        raise PlanError(f"cannot read the bootloader env: {exc}") from None


def _same(a: bootenv.FileContent, b: bootenv.FileContent) -> bool:
    """Env file contents compare equal; the probe loses trailing newlines of text files."""
    if a is None or b is None:
        return a is None and b is None
    ta = a.decode("utf-8", "replace") if isinstance(a, bytes) else a
    tb = b.decode("utf-8", "replace") if isinstance(b, bytes) else b
    return ta.rstrip("\n") == tb.rstrip("\n")


def env_plan(before: Mapping[str, bootenv.FileContent], state: bootenv.BootState) -> tuple[list[Op], dict[str, bootenv.FileContent]]:
    """Operations that make the env files say ``state``, and the files after them."""
    try:
        rendered = bootenv.render_files(state, before)
    except ValueError as exc:
        raise PlanError(f"cannot write the bootloader env: {exc}") from None
    ops: list[Op] = []
    after = dict(before)
    for name, content in rendered.items():
        if _same(before.get(name), content):
            continue
        after[name] = content
        if content is None:
            ops.append(("del", f"{BOOT_MOUNT}/{name}", ""))
        else:
            text = content.decode("utf-8") if isinstance(content, bytes) else content
            ops.append(("put", f"{BOOT_MOUNT}/{name}", text))
    return ops, after


def describe_env(state: bootenv.BootState, dev: t.Any) -> dict[str, t.Any]:
    return {
        "bootloader": state.bootloader,
        "resin_root_part": state.root_part,
        "root": root_label(dev, state.root_part),
        "upgrade_available": state.upgrade_available,
        "bootcount": state.bootcount,
        "bootcount_limit": state.bootcount_limit,
    }


def root_label(dev: t.Any, index: int) -> str:
    if index == dev.active_index:
        return dev.active_label
    if index == dev.inactive_index:
        return dev.inactive_label
    return f"partition {index}"


def _markers_text(present: Iterable[str]) -> str:
    names = sorted(present)
    return f"# markers in {STATE_MOUNT}\n" + "".join(f"{n}\n" for n in names)


def marker_plan(dev: t.Any, probe: SwitchProbe, *, put: Mapping[str, str] | None = None,
                remove: Iterable[str] = ()) -> tuple[list[Op], list[str], set[str], set[str]]:
    """Operations on the rollback markers in /mnt/state: (ops, actions, present before, present after)."""
    put = put or {}
    present = set(dev.markers)
    if probe.rollback_marker is not None:
        present.add(ROLLBACK_MARKER)
    after = set(present)
    ops: list[Op] = []
    actions: list[str] = []
    for name, content in put.items():
        current = probe.health_variables if name == HEALTH_VARIABLES_FILE else ("" if name in present else None)
        if name in present and (current is None or current.rstrip("\n") == content.rstrip("\n")):
            continue
        ops.append(("put", f"{STATE_MOUNT}/{name}", content))
        actions.append(f"{'rewrite' if name in present else 'create'} {STATE_MOUNT}/{name}")
        after.add(name)
    for name in remove:
        if name in present:
            ops.append(("del", f"{STATE_MOUNT}/{name}", ""))
            actions.append(f"remove {STATE_MOUNT}/{name}")
            after.discard(name)
    return ops, actions, present, after


def _env_section(dev: t.Any, before_files: Mapping[str, bootenv.FileContent], after_files: Mapping[str, bootenv.FileContent],
                 markers_before: set[str], markers_after: set[str]) -> dict[str, str]:
    diff = bootenv.diff_text(before_files, after_files)
    return {
        "before": diff["before"] + _markers_text(markers_before),
        "after": diff["after"] + _markers_text(markers_after),
    }


def _env_actions(before: bootenv.BootState, after: bootenv.BootState, dev: t.Any, env_ops: list[Op]) -> list[str]:
    if not env_ops:
        return []
    parts = []
    if before.root_part != after.root_part:
        parts.append(f"resin_root_part {before.root_part:x} -> {after.root_part:x} ({root_label(dev, after.root_part)})")
    if before.upgrade_available != after.upgrade_available:
        parts.append(f"upgrade_available {int(before.upgrade_available)} -> {int(after.upgrade_available)}")
    if before.bootcount != after.bootcount or any(op[0] == "del" for op in env_ops):
        parts.append("reset the boot counter")
    return [f"set the bootloader env: {', '.join(parts) or 'rewrite'}"]


def plan_arm(dev: t.Any, probe: SwitchProbe, *, expected_digest: str | None = None, extra_keep: Iterable[str] = (),
             assume_staged: bool = False) -> SwitchPlan:
    """bootenv armed: env names the inactive root, ``upgrade_available=1``, count reset, breadcrumbs
    written, the markers of a previous rollback removed (hook 80-rollback + the flip hooks).

    ``assume_staged`` (check mode): plan the env change even when the release is not staged yet
    (no stamp, boot files not copied), and say so.
    """
    state, files = current_boot_state(dev, probe)
    active_stamp = dev.active_stamp or {}
    if expected_digest and active_stamp.get("digest") == expected_digest and state.root_part == dev.active_index:
        how = "waiting for its commit" if state.upgrade_available else "committed"
        return SwitchPlan(msg=f"already booted the target from {dev.active_label} ({how}); nothing to arm",
                          data={"boot_env": describe_env(state, dev)})
    notes: list[str] = []
    try:
        stamp = _staged_release(dev, probe, expected_digest, extra_keep)
    except NotStaged as exc:
        if not assume_staged:
            raise
        stamp = {}
        notes.append(f"(assumes the earlier steps staged the release: {exc})")
    target = bootenv.arm(state, dev.inactive_index)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(
        dev, probe,
        put={HEALTH_BREADCRUMB: "", ALTBOOT_BREADCRUMB: "", HEALTH_VARIABLES_FILE: HEALTH_VARIABLES},
        remove=ARM_REMOVES,
    )
    # breadcrumbs first: an env armed without them would boot the new OS with no rollback
    plan = SwitchPlan(ops=finish_ops(m_ops + env_ops), actions=_env_actions(state, target, dev, env_ops) + m_actions)
    if plan.ops:
        plan.diff = _env_section(dev, files, after_files, m_before, m_after)
        plan.actions += notes
    plan.data = {"boot_env": describe_env(target, dev), "release": {k: stamp.get(k) for k in ("version", "digest") if k in stamp}}
    return plan


def _staged_release(dev: t.Any, probe: SwitchProbe, expected_digest: str | None, extra_keep: Iterable[str]) -> dict[str, t.Any]:
    """The inactive root's stamp, once the release is staged: stamp there (naming ``expected_digest``)
    and its boot files on the boot partition. NotStaged otherwise."""
    stamp = _stamp_or_fail(dev, expected_digest)
    boot, free = _need_listing(probe)
    payload = _payload(probe, "inactive", dev.inactive_label)
    what = f"the inactive root ({dev.inactive_label}, {stamp.get('version', '?')})"
    copy = plan_boot_copy(f"{INACTIVE_SYSROOT}/{PAYLOAD_DIR}", payload, boot, free, reserve=0, extra_keep=_check_extra_keep(extra_keep), what=what)
    if copy.plan.copy:
        names = ", ".join(copy.plan.copy[:5]) + (", ..." if len(copy.plan.copy) > 5 else "")
        raise NotStaged(
            f"the boot partition does not hold the boot files of {what} ({len(copy.plan.copy)} differ: {names}); run osfleet.hup.bootfiles first"
        )
    return stamp


def plan_commit(dev: t.Any, probe: SwitchProbe) -> SwitchPlan:
    """bootenv committed: ``rollback-stop`` (facts §9.8): breadcrumbs, variables and
    rollback-health-failed removed, boot counter cleared, ``upgrade_available=0``."""
    state, files = current_boot_state(dev, probe)
    if state.upgrade_available and state.root_part != dev.active_index:
        raise PlanError(
            f"the bootloader env is armed for {root_label(dev, state.root_part)}, which has not booted yet "
            f"(the device runs {dev.active_label}); reboot into it (osfleet.hup.reboot) before committing"
        )
    target = bootenv.commit(state)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(dev, probe, remove=STOP_REMOVES)
    plan = SwitchPlan(ops=finish_ops(env_ops + m_ops), actions=_env_actions(state, target, dev, env_ops) + m_actions)
    if plan.ops:
        plan.diff = _env_section(dev, files, after_files, m_before, m_after)
    plan.data = {"boot_env": describe_env(target, dev)}
    return plan


def rollback_target(state: bootenv.BootState, active_index: int, inactive_index: int) -> int:
    """The root a rollback returns to (the one that ran before the update).

    * armed for the inactive root, not booted yet (or the bootloader fell back to the active
      root): the active root, i.e. disarm;
    * the env names the inactive root and is not armed: a rollback already happened, waiting for
      its reboot: the inactive root;
    * armed and booted (the env names the active root): the inactive root;
    * not armed, the env names the active root: nothing was switched; the active root stays.
    """
    if state.root_part not in (active_index, inactive_index):
        raise PlanError(f"the bootloader env names partition {state.root_part}, which is neither root ({active_index}, {inactive_index})")
    if state.root_part == inactive_index:
        return active_index if state.upgrade_available else inactive_index
    return inactive_index if state.upgrade_available else active_index


def plan_rollback(
    dev: t.Any,
    probe: SwitchProbe,
    *,
    target_index: int | None = None,
    reason: str = "requested",
    now: str = "",
    extra_keep: Iterable[str] = (),
) -> SwitchPlan:
    """Roll back: the target root's boot files back on the boot partition, the env at the target
    root with ``upgrade_available=0`` and no count, breadcrumbs cleared (rollback-stop), and the
    marker ``/mnt/state/osfleet-rollback`` (reason, time) written when anything changed.

    ``target_index`` None: :func:`rollback_target` decides (bootenv rolled_back); the health step
    passes the inactive root explicitly (it rolls back even after the device's own commit).
    """
    state, files = current_boot_state(dev, probe)
    target_index = rollback_target(state, dev.active_index, dev.inactive_index) if target_index is None else target_index
    if target_index not in (dev.active_index, dev.inactive_index):
        raise PlanError(f"cannot roll back to partition {target_index}: it is neither root")
    side = "active" if target_index == dev.active_index else "inactive"
    label = root_label(dev, target_index)
    if side == "inactive" and not dev.inactive_os_release:
        raise PlanError(f"cannot roll back to the inactive root ({label}): it holds no OS (no /etc/os-release)")
    version = dev.version if side == "active" else dev.inactive_os_release.get("VERSION", "?")
    boot, free = _need_listing(probe)
    payload = _payload(probe, side, label)
    sysroot = ACTIVE_SYSROOT if side == "active" else INACTIVE_SYSROOT
    copy = plan_boot_copy(
        f"{sysroot}/{PAYLOAD_DIR}", payload, boot, free, reserve=0, extra_keep=_check_extra_keep(extra_keep),
        what=f"the {side} root ({label}, {version})", fingerprint=False,
        leaving=probe.payloads.get("inactive" if side == "active" else "active"),
    )
    target = bootenv.rollback(state, target_index)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(dev, probe, remove=STOP_REMOVES)
    plan = SwitchPlan()
    if copy.plan.copy:
        plan.actions.append(f"restore {len(copy.plan.copy)} boot files of {label} ({version})")
    if copy.removed:
        plan.actions.append(f"remove {len(copy.removed)} boot files that {label} ({version}) does not ship: {', '.join(copy.removed)}")
    plan.actions += _env_actions(state, target, dev, env_ops) + m_actions
    ops = copy.ops + env_ops + m_ops
    if ops:
        marker = {"reason": reason, "at": now, "from_root": dev.active_label, "from_version": dev.version, "to_root": label, "to_version": version}
        ops.append(("put", f"{STATE_MOUNT}/{ROLLBACK_MARKER}", json.dumps(marker, sort_keys=True) + "\n"))
        plan.actions.append(f"record the rollback ({reason}) in {STATE_MOUNT}/{ROLLBACK_MARKER}")
        m_after = m_after | {ROLLBACK_MARKER}
        plan.diff = bootfiles_diff(copy, payload, boot) if copy.ops else None
        plan.extend(SwitchPlan(diff=_env_section(dev, files, after_files, m_before, m_after)))
    plan.ops = finish_ops(ops)
    plan.data = {
        "boot_env": describe_env(target, dev),
        "rollback_to": {"root": label, "version": version},
        "restored": [copy.dst_names[p] for p in copy.plan.copy],
        "removed": list(copy.removed),
    }
    return plan


def decide_bootenv(dev: t.Any, probe: SwitchProbe, *, state: str, expected_digest: str | None = None,
                   extra_keep: Iterable[str] = (), now: str = "", assume_staged: bool = False) -> SwitchPlan:
    if state == "armed":
        return plan_arm(dev, probe, expected_digest=expected_digest, extra_keep=extra_keep, assume_staged=assume_staged)
    if expected_digest:
        raise PlanError(f"expected_digest applies to state=armed only, not state={state}")
    if state == "committed":
        return plan_commit(dev, probe)
    if state == "rolled_back":
        return plan_rollback(dev, probe, reason="requested", now=now, extra_keep=extra_keep)
    raise PlanError(f"unknown state {state!r} (expected armed, committed or rolled_back)")


def needs_listing(state: str) -> bool:
    """Whether a bootenv state needs the boot files listed (hashing; skipped for a commit)."""
    return state != "committed"


# --- reboot --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RebootPlan:
    reboot: bool
    reason: str
    expected_root: str


def decide_reboot(dev: t.Any, state: bootenv.BootState, *, only_if_pending: bool = True) -> RebootPlan:
    """Reboot when asked unconditionally, or when the env names another root than the booted one."""
    try:
        expected = bootenv.next_boot_root(state, dev.active_index, dev.inactive_index)
    except ValueError as exc:
        raise PlanError(f"cannot tell which root the next boot lands on: {exc}") from None
    label = root_label(dev, expected)
    if state.root_part != dev.active_index:
        return RebootPlan(True, f"the bootloader env names {root_label(dev, state.root_part)}, the device runs {dev.active_label}", label)
    if not only_if_pending:
        return RebootPlan(True, "reboot requested (only_if_pending=false)", label)
    return RebootPlan(False, f"nothing pending: the bootloader env names the booted root {dev.active_label}", label)


# --- health --------------------------------------------------------------------------------------

WAIT = "wait"
READY = "ready"
ROLLED_BACK = "rolled_back"
NOT_BOOTED = "not_booted"
WRONG = "wrong"


@dataclass(frozen=True)
class HealthView:
    """Where the device stands after the update's reboot."""

    kind: str
    msg: str = ""
    reason: str | None = None
    committed: bool = False
    #: a WAIT that the step may stop waiting for at device_timeout and go on with its own checks
    proceed_on_timeout: bool = False


def _marker_reason(dev: t.Any, probe: SwitchProbe) -> str | None:
    if ALTBOOT_TRIGGERED in dev.markers:
        return "altboot"
    if HEALTH_TRIGGERED in dev.markers:
        return "health"
    if probe.rollback_marker is not None:
        reason = str(probe.rollback_marker.get("reason", "unknown"))
        return reason if reason in REASONS else "unknown"
    return None


def _rolled_back(dev: t.Any, reason: str | None, expected_version: str | None) -> HealthView:
    why = REASONS.get(reason or "", "no marker says why")
    want = f", not {expected_version}" if expected_version else ""
    return HealthView(ROLLED_BACK, f"the device rolled back ({why}): it runs {dev.version or '?'} from {dev.active_label}{want}", reason)


def classify_health(dev: t.Any, probe: SwitchProbe, state: bootenv.BootState, expected_version: str | None) -> HealthView:
    """Classify the booted device: rolled back (and why), still settling, or ready for the checks."""
    on_target = expected_version is None or same_version(dev.version, expected_version)
    reason = _marker_reason(dev, probe)
    pending_other = state.root_part != dev.active_index
    if not on_target:
        if pending_other and state.upgrade_available:
            if state.bootcount > state.bootcount_limit and ALTBOOT_BREADCRUMB in dev.markers:
                return HealthView(WAIT, f"the bootloader fell back to {dev.active_label}; waiting for rollback-altboot", "altboot")
            if state.bootcount > state.bootcount_limit:
                return _rolled_back(dev, "altboot", expected_version)
            return HealthView(
                NOT_BOOTED,
                f"the device still runs {dev.version or '?'} from {dev.active_label}; the env is armed for "
                f"{root_label(dev, state.root_part)}: reboot it first (osfleet.hup.reboot)",
            )
        if pending_other and not state.upgrade_available:
            return HealthView(WAIT, f"a rollback to {root_label(dev, state.root_part)} waits for its reboot", reason or "unknown")
        if dev.rollback_health_state == "rolled-back":
            return HealthView(WAIT, "rollback-health rolled back; waiting for the reboot", "health")
        if reason is not None:
            return _rolled_back(dev, reason, expected_version)
        if expected_version and same_version(dev.inactive_os_release.get("VERSION", ""), expected_version):
            return _rolled_back(dev, "unknown", expected_version)
        return HealthView(WRONG, f"the device runs {dev.version or '?'} from {dev.active_label}, not {expected_version}")
    # the expected version runs
    if expected_version is None and reason in ("altboot", "health"):
        return _rolled_back(dev, reason, expected_version)
    if pending_other:
        if state.upgrade_available:
            return HealthView(WRONG, f"the device runs {dev.version} from {dev.active_label} but the env is armed for {root_label(dev, state.root_part)}")
        return HealthView(WAIT, f"a rollback to {root_label(dev, state.root_part)} waits for its reboot", reason or "unknown")
    if dev.rollback_health_state == "rolled-back":
        return HealthView(WAIT, "rollback-health rolled back; waiting for the reboot", "health")
    crumb = HEALTH_BREADCRUMB in dev.markers
    running = dev.rollback_health_state in ("waiting", "testing") or dev.services.get("rollback-health") == "active"
    if crumb and running and state.upgrade_available:
        return HealthView(WAIT, f"rollback-health is {dev.rollback_health_state or 'running'}", proceed_on_timeout=True)
    committed = not state.upgrade_available and not any(b in dev.markers for b in BREADCRUMBS)
    return HealthView(READY, committed=committed)


@dataclass(frozen=True)
class CheckResult:
    command: str
    rc: int | None
    stdout: str = ""
    stderr: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def as_dict(self) -> dict[str, t.Any]:
        return {"command": self.command, "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr, "attempts": self.attempts, "ok": self.ok}


def decide_after_checks(checks: Iterable[CheckResult], *, committed: bool, commit: bool, rollback: bool) -> str:
    """``commit``, ``none`` (passed, nothing to do), ``rollback`` or ``fail`` (failed, no rollback)."""
    if all(c.ok for c in checks):
        return "commit" if commit and not committed else "none"
    return "rollback" if rollback else "fail"


def failed_checks_text(checks: Iterable[CheckResult]) -> str:
    parts = []
    for c in checks:
        if not c.ok:
            out = (c.stderr.strip() or c.stdout.strip())[-200:]
            parts.append(f"{c.command!r} exited {c.rc if c.rc is not None else 'without a result'}" + (f": {out}" if out else ""))
    return "; ".join(parts)


def health_preview(view: HealthView, expected_version: str | None, *, commands: int, commit: bool, rollback: bool) -> tuple[bool, list[str]]:
    """Check mode of the health step: (changed, actions). Never fails: in a dry run of the whole
    update the device has not rebooted into the target, so the step says what it would do then."""
    actions: list[str] = []
    committed = view.kind == READY and view.committed
    if view.kind in (ROLLED_BACK, WRONG, NOT_BOOTED):
        actions.append(f"after the update's reboot, verify that the device runs {expected_version or 'the new OS'} (now: {view.msg})")
    elif view.kind == WAIT:
        actions.append(f"wait for the device to settle ({view.msg})")
    if commands:
        actions.append(f"run {commands} health check command(s)")
    if commit and not committed:
        actions.append("commit the update (rollback-stop) when the checks pass")
    if rollback and commands:
        actions.append("roll back to the other root and reboot when a check fails")
    return commit and not committed, actions
