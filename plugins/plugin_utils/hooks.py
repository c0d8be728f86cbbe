# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The switch on a balenaOS (hostapp) device is the hostapp-update hooks' work (hostapp-facts §5).

``hostapp-update`` (the rootfs step) runs the NEW OS's hooks: they copy its ``/resin-boot`` to the
boot partition with the keep-back list, arm the bootloader env for the new root and write the
rollback breadcrumbs. The bootfiles and bootenv (armed) steps then only verify that work
(:func:`verify_boot_files`, :func:`verify_armed`) and never write; bootenv rolled_back puts the
env and boot files back with the RUNNING OS's hooks (``DURING_UPDATE=0 hostapp-update-hooks``, the
way hostapp-update recovers from a failed hook: :func:`plan_restore`, ``scripts/current_hooks.sh``).

"Byte-identical to before" needs a before: the lock step records the sha256 of the boot
partition's keep-back files on a hostapp device while the env is not armed for the other root
(:func:`should_record`, :func:`keepback_patterns`; ``scripts/lock_step.sh`` writes the file
:data:`KEEPBACK_RECORD`); the switch probe reads that record.
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv, keepback, watchdog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import BOOT_MOUNT, STATE_MOUNT
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import ALTBOOT_BREADCRUMB, HEALTH_BREADCRUMB, HEALTH_VARIABLES_FILE

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession
    from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
    from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import Listing, SwitchProbe

#: who did the switch's work on a hostapp device (every message names them)
NEW_HOOKS = "the new OS's hostapp-update hooks"
#: what puts the env back for the running OS (hostapp-update's own recovery)
CURRENT_HOOKS = "DURING_UPDATE=0 hostapp-update-hooks"
#: what the health step's rollback runs on a hostapp device that booted the new OS (rollback-health's way)
PREVIOUS_HOOKS = "the previous OS's hooks (DURING_UPDATE=1 hostapp-update-hooks chrooted in the inactive hostapp)"
#: the sha256 of the boot partition's keep-back files before the hooks ran (``sha256sum`` lines, ``./path``)
KEEPBACK_RECORD = f"{STATE_MOUNT}/osfleet/keepback-before.sha256"
_SHA_LINE = re.compile(r"^([0-9a-f]{64})  \./(.+)$")


def keepback_patterns(extra_keep: Iterable[str] = ()) -> list[str]:
    """The boot-partition paths (``dir/`` = below) the record covers: everything kept back, the
    env files excepted (the hooks rewrite those)."""
    names = [*keepback.KEEP_BACK_NEVER, *keepback.KEEP_BACK_IF_ABSENT, *extra_keep]
    return [n for n in dict.fromkeys(names) if n not in keepback.ENV_FILES]


def parse_record(text: str | None) -> dict[str, str] | None:
    """The keep-back record (``path -> sha256``); None when there is none (or it is unreadable)."""
    if text is None:
        return None
    out: dict[str, str] = {}
    for line in text.splitlines():
        match = _SHA_LINE.match(line)
        if not match:
            return None
        out[match.group(2)] = match.group(1)
    return out


def should_record(dev: DeviceState) -> bool:
    """Record the keep-back files now: a hostapp device whose env is not armed for the other root
    (the new OS's hooks have not switched it; once they have, the record of before stays)."""
    if not dev.hostapp:
        return False
    try:
        state = bootenv.boot_state(dev)
    except PlanError:
        return False
    return not (state.upgrade_available and state.root_part == dev.inactive_index)


def keepback_line(count: str) -> str:
    """The action line of a keep-back record of ``count`` files."""
    return f"recorded the sha256 of {count} keep-back file(s) of {BOOT_MOUNT} in {KEEPBACK_RECORD} (the hostapp-update hooks must leave them)"


@dataclass
class BootCheck:
    """The verification of the boot files the new OS's hooks copied."""

    problems: list[str] = field(default_factory=list)
    #: payload files the boot partition lacks or holds with other contents (what the hooks copy)
    differ: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    kept_back: list[str] = field(default_factory=list)
    note: str = ""
    #: what the hooks were to do with the boot files (the failure message says it, :func:`failure`)
    expected: str = ""


def _folded(files: Mapping[str, keepback.FileInfo]) -> dict[str, keepback.FileInfo]:
    return {name.casefold(): info for name, info in sorted(files.items(), reverse=True)}


def _names(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f", ... ({len(paths)} in all)" if len(paths) > 5 else "")


def check_boot_files(probe: SwitchProbe, payload: Listing | None, *, extra_keep: Iterable[str] = (), what: str) -> BootCheck:
    """Does the boot partition hold ``payload`` (an OS's ``/resin-boot``) as its hooks copy it: every
    file the keep-back list does not hold back with the payload's content, the if-absent ones
    present, and the keep-back files as the record says they were (matched case-insensitively, vfat)?"""
    check = BootCheck()
    extra_keep = tuple(extra_keep)
    if probe.boot is None:
        check.problems.append(f"the probe could not list {BOOT_MOUNT}")
        return check
    if payload is None or not payload.present or not payload.files:
        check.problems.append(f"{what}'s /resin-boot could not be read")
        return check
    boot = _folded(probe.boot.files)
    missing: list[str] = []
    differ: list[str] = []
    for path, info in sorted(payload.files.items()):
        if path == keepback.FINGERPRINT_FILE or path in keepback.ENV_FILES:
            continue
        rule = keepback.rule_for(path, extra_keep)
        current = boot.get(path.casefold())
        if rule == keepback.RULE_COPY:
            if current is None:
                missing.append(path)
            elif not current.same_content(info):
                differ.append(path)
            else:
                check.copied.append(path)
        elif rule == keepback.RULE_IF_ABSENT and current is None:
            missing.append(path)
        else:
            check.kept_back.append(path)
    check.differ = sorted(missing + differ)
    if missing:
        check.problems.append(f"{BOOT_MOUNT} lacks {what}'s {_names(missing)}")
    if differ:
        check.problems.append(f"{BOOT_MOUNT} holds other contents than {what} for {_names(differ)}")
    return check


def check_keepback(probe: SwitchProbe, check: BootCheck) -> None:
    """The keep-back files against the record of before (none: said in ``check.note``)."""
    record = probe.keepback_record
    if record is None:
        check.note = f"no record of the keep-back files from before the update ({KEEPBACK_RECORD}, made by osfleet.hup.lock): not compared"
        return
    boot = _folded(probe.boot.files if probe.boot else {})
    gone = [p for p in sorted(record) if boot.get(p.casefold()) is None]
    changed = [p for p, sha in sorted(record.items()) if p not in gone and boot[p.casefold()].sha256 != sha]
    found = []
    if changed:
        found.append(f"{_keepback_files(changed)} {'has' if len(changed) == 1 else 'have'} other contents than before the update")
    if gone:
        found.append(f"{_keepback_files(gone)} {'is' if len(gone) == 1 else 'are'} gone")
    if found:
        check.problems.append(f"on {BOOT_MOUNT} {' and '.join(found)} (against the sha256 that osfleet.hup.lock recorded in {KEEPBACK_RECORD})")


def _keepback_files(paths: list[str]) -> str:
    return f"the keep-back file{'s' if len(paths) > 1 else ''} {_names(paths)}"


def verify_boot_files(dev: DeviceState, probe: SwitchProbe, *, extra_keep: Iterable[str] = ()) -> BootCheck:
    """The new OS's boot files, copied by its hooks, and the keep-back files unchanged."""
    version = (dev.inactive_stamp or {}).get("version", "?")
    check = check_boot_files(probe, probe.payloads.get("inactive"), extra_keep=extra_keep,
                             what=f"the new OS ({version}, the inactive hostapp on {dev.inactive_label})")
    check.expected = (f"copy /resin-boot of {version} (the inactive hostapp on {dev.inactive_label}) to {BOOT_MOUNT}, "
                      "leaving the keep-back files as they were")
    if probe.inactive_mount not in (None, "ok"):
        check.problems.append(str(probe.inactive_mount))
    check_keepback(probe, check)
    return check


def env_problems(dev: DeviceState, probe: SwitchProbe, state: bootenv.BootState) -> list[str]:
    """What is missing for an env that the new OS's hooks armed: it names the inactive root,
    upgrade_available=1, the count reset, the breadcrumbs and rollback-health's variables."""
    problems = []
    if state.root_part != dev.inactive_index:
        problems.append(f"the bootloader env names {dev.root_label(state.root_part)}, not the new root {dev.inactive_label}")
    if not state.upgrade_available:
        problems.append("the bootloader env is not armed (upgrade_available=0)")
    if state.bootcount:
        problems.append(f"the boot counter is {state.bootcount}, not reset")
    missing = [f"{STATE_MOUNT}/{m}" for m in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB) if m not in dev.markers]
    if probe.health_variables is None:
        missing.append(f"{STATE_MOUNT}/{HEALTH_VARIABLES_FILE}")
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    return problems


def failure(problems: Iterable[str], expected: str, step: str, who: str = NEW_HOOKS) -> str:
    """One sentence: what ``who`` were to do (``expected``), what was found instead (``problems``),
    and that ``step`` wrote nothing (the action puts the device's name before it)."""
    return (f"{who} were to {expected}, but {'; '.join(problems)}; {step} wrote nothing "
            "(on a balenaOS device the hooks do the switch, the collection only verifies it)")


def restore_done(dev: DeviceState, probe: SwitchProbe, state: bootenv.BootState, *, extra_keep: Iterable[str] = ()) -> list[str]:
    """What still differs from the running OS as its own hooks leave the device (DURING_UPDATE=0):
    env at the running root, not armed, no breadcrumbs, its boot files on the boot partition."""
    problems = []
    if state.root_part != dev.active_index:
        problems.append(f"the bootloader env names {dev.root_label(state.root_part)}, not the running root {dev.active_label}")
    if state.upgrade_available:
        problems.append("the bootloader env is armed (upgrade_available=1)")
    left = [f"{STATE_MOUNT}/{m}" for m in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB) if m in dev.markers]
    if left:
        problems.append(f"{', '.join(left)} still there")
    if probe.listed:
        problems += check_boot_files(probe, probe.payloads.get("active"), extra_keep=extra_keep,
                                     what=f"the running OS ({dev.version or '?'}, {dev.active_label})").problems
    return problems


def tell_watchdog(session: DeviceSession, dev: DeviceState) -> list[str]:
    """While the env the new OS's hooks armed has not booted, the run's watchdog must be able to put
    it back if the controller goes away: tell it to run the running OS's hooks then (an action line)."""
    if not session.run_id or not dev.hostapp:
        return []
    try:
        state = bootenv.boot_state(dev)
    except PlanError:
        return []
    if not (state.upgrade_available and state.root_part == dev.inactive_index):
        return []
    if watchdog.store_disarm_hooks(session, session.run_id):
        return [f"told the device-side watchdog to put the env back with the running OS's hooks ({CURRENT_HOOKS}) "
                "if the controller goes away before the reboot"]
    return []


#: what commits a balenaOS device after rollback-stop (hostapp-facts §5); the commit hooks do the
#: work only a committed OS may do (secure-boot dbx and TPM policy, the legacy supervisor database)
COMMIT_HOOKS = "the running OS's commit hooks (hostapp-update-hooks-v2 --commit)"
#: the action line of a commit on a hostapp device, before the hooks ran (check mode says it so)
COMMIT_HOOKS_ACTION = f"ran {COMMIT_HOOKS}"
_FAILED_COMMIT_HOOK = re.compile(r"commit hook (\S+) failed")


def commit_hooks_due(dev: DeviceState, ops: Iterable[t.Any]) -> bool:
    """A commit of the step's own on a balenaOS device runs the commit hooks after its operations
    (rollback-stop's effects): whenever it writes something. A device found committed is left
    alone (whoever committed it ran them: rollback-health does)."""
    return bool(dev.hostapp and list(ops))


@dataclass(frozen=True)
class CommitHooksReport:
    """What ``scripts/commit_hooks.sh`` found: the runner (None: the device has none), its exit
    status, the commit hooks that failed (the runner goes on after one) and its last lines."""

    tool: str | None
    rc: int | None
    failed: tuple[str, ...] = ()
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.tool is not None and self.rc == 0 and not self.failed

    def actions(self) -> list[str]:
        if self.tool is None:
            return ["the device has no hostapp-update-hooks-v2 or hostapp-update-hooks: no commit hooks ran"]
        ran = f"ran the running OS's commit hooks ({self.tool} --commit)"
        if self.rc != 0:
            last = (self.output.strip().splitlines() or [""])[-1]
            return [f"{ran}: the runner failed (exit {self.rc}){': ' + last if last else ''}"]
        if self.failed:
            return [f"{ran}: the commit hook(s) {', '.join(self.failed)} failed; the runner went on with the others "
                    "(the update stays committed)"]
        return [ran]

    def as_dict(self) -> dict[str, t.Any]:
        return {"tool": self.tool, "rc": self.rc, "failed": list(self.failed), "ok": self.ok, "output": self.output}


def commit_hooks_report(result: t.Mapping[str, t.Any]) -> CommitHooksReport:
    """The JSON of ``scripts/commit_hooks.sh``, read: the failed hooks from the runner's lines
    (``hostapp-update-hooks: commit hook NAME failed; continuing``)."""
    output = str(result.get("output") or "")
    failed = tuple(dict.fromkeys(m.group(1) for m in _FAILED_COMMIT_HOOK.finditer(output)))
    tool = result.get("tool")
    rc = result.get("rc")
    return CommitHooksReport(str(tool) if tool else None, int(rc) if isinstance(rc, int) else None, failed, output)


def run_commit_hooks(session: DeviceSession, actions: list[str]) -> CommitHooksReport:
    """Run the running OS's commit hooks after the step's commit; ``actions`` (the plan's) get the
    report in place of :data:`COMMIT_HOOKS_ACTION`."""
    report = commit_hooks_report(session.run_json("commit_hooks", what=f"running {COMMIT_HOOKS}"))
    at = actions.index(COMMIT_HOOKS_ACTION) if COMMIT_HOOKS_ACTION in actions else len(actions)
    actions[at:at + 1] = report.actions()
    return report


def commit_hooks_msg(report: CommitHooksReport) -> str:
    """A message for the step when the commit hooks did not all succeed ('' when they did)."""
    if report.ok:
        return ""
    return "committed, but " + report.actions()[0].replace("ran the running OS's", "the running OS's", 1)
