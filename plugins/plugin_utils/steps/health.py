# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The health step's decisions: where the device stands after the update's reboot (rolled back and
why, still settling, ready), what to do after the checks, and what check mode says.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import (
    ALTBOOT_BREADCRUMB,
    ALTBOOT_TRIGGERED,
    BREADCRUMBS,
    HEALTH_BREADCRUMB,
    HEALTH_TRIGGERED,
    REASONS,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version


@dataclass(frozen=True)
class HealthArgs:
    """The health module's options (defaults in its DOCUMENTATION); ``expected_version`` defaulted
    from the release options."""

    expected_version: str | None
    commands: tuple[str, ...]
    retries: int
    delay: int
    device_timeout: int
    commit: bool
    rollback: bool
    reboot_timeout: int
    connect_timeout: int
    extra_keep: tuple[str, ...]

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], expected_version: str | None) -> HealthArgs:
        return cls(
            expected_version=expected_version,
            commands=tuple(args["commands"] or ()),
            retries=int(args["retries"]),
            delay=int(args["delay"]),
            device_timeout=int(args["device_timeout"]),
            commit=bool(args["commit"]),
            rollback=bool(args["rollback"]),
            reboot_timeout=int(args["reboot_timeout"]),
            connect_timeout=int(args["connect_timeout"]),
            extra_keep=tuple(args["extra_keep"] or ()),
        )


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
    #: a WAIT for the device's own rollback-health to commit (a balenaOS device): never given up
    #: for a commit of the step's own; the device_timeout fails the step
    device_commits: bool = False


def _marker_reason(dev: DeviceState, probe: SwitchProbe) -> str | None:
    if ALTBOOT_TRIGGERED in dev.markers:
        return "altboot"
    if HEALTH_TRIGGERED in dev.markers:
        return "health"
    if probe.rollback_marker is not None:
        reason = str(probe.rollback_marker.get("reason", "unknown"))
        return reason if reason in REASONS else "unknown"
    return None


def _rolled_back(dev: DeviceState, reason: str | None, expected_version: str | None) -> HealthView:
    why = REASONS.get(reason or "", "no marker says why")
    want = f", not {expected_version}" if expected_version else ""
    return HealthView(ROLLED_BACK, f"the device rolled back ({why}): it runs {dev.version or '?'} from {dev.active_label}{want}", reason)


def classify_health(dev: DeviceState, probe: SwitchProbe, state: bootenv.BootState, expected_version: str | None) -> HealthView:
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
                f"{dev.root_label(state.root_part)}: reboot it first (osfleet.hup.reboot)",
            )
        if pending_other and not state.upgrade_available:
            return HealthView(WAIT, f"a rollback to {dev.root_label(state.root_part)} waits for its reboot", reason or "unknown")
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
    crumb = HEALTH_BREADCRUMB in dev.markers
    running = dev.rollback_health_state in ("waiting", "testing") or dev.services.get("rollback-health") == "active"
    if pending_other:
        if state.upgrade_available and crumb and running:
            # rollback-health gave the target up: the old OS's hooks armed the previous root, and
            # rollback-stop, the triggered marker and the reboot follow within seconds
            return HealthView(WAIT, f"rollback-health is rolling back to {dev.root_label(state.root_part)}", "health")
        if state.upgrade_available:
            return HealthView(WRONG, f"the device runs {dev.version} from {dev.active_label} but the env is armed for {dev.root_label(state.root_part)}")
        return HealthView(WAIT, f"a rollback to {dev.root_label(state.root_part)} waits for its reboot", reason or "unknown")
    if dev.rollback_health_state == "rolled-back":
        return HealthView(WAIT, "rollback-health rolled back; waiting for the reboot", "health")
    committed = not state.upgrade_available and not any(b in dev.markers for b in BREADCRUMBS)
    if dev.hostapp and crumb and not committed:
        # a balenaOS device whose commit machinery is armed: only its rollback-health commits (with
        # the commit hooks, hostapp-facts §5); the step never does, not even at the device_timeout
        return HealthView(WAIT, f"the device's rollback-health has not committed the update (rollback-health: "
                                f"{dev.rollback_health_state or ('running' if running else 'not running')}); on a balenaOS device only "
                                "rollback-health commits (its commit hooks), the step does not commit by itself", device_commits=True)
    # rollback-health runs with its breadcrumb there or the env armed: it tests, or it is in the
    # middle of its commit (rollback-stop removes the breadcrumbs, then clears upgrade_available):
    # wait for it either way
    if running and (crumb or state.upgrade_available):
        return HealthView(WAIT, f"rollback-health is {dev.rollback_health_state or 'running'}", proceed_on_timeout=True)
    if committed and dev.services.get("rollback-health") == "active" and dev.rollback_health_state == "testing":
        # rollback-health's own commit, rollback-stop done: its commit hooks and its state follow
        # (only while it tests: in its initial wait it has not committed, the commit is another's)
        return HealthView(WAIT, "rollback-health is finishing its commit (rollback-stop ran, its commit hooks follow)", proceed_on_timeout=True)
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


#: ``committed_by``: the device's own rollback-health committed the update (while the step waited,
#: or before it looked), the step itself (rollback-stop), or it was committed before and nothing in
#: this boot says by whom
BY_ROLLBACK_HEALTH = "rollback-health"
BY_STEP = "step"
BY_EARLIER = "earlier"
COMMITTED_TEXT = {
    BY_ROLLBACK_HEALTH: "committed by the device's rollback-health",
    BY_STEP: "committed (rollback-stop)",
    BY_EARLIER: "already committed when the step looked (nothing to do)",
}


def committed_by(view: HealthView, *, waited_for_rollback_health: bool, rollback_health_state: str) -> str | None:
    """Who committed an update that the step found committed (``view.committed``; None otherwise):
    the device's rollback-health when the step saw it run and then found the update committed, or
    when rollback-health's state (of this boot) says it committed; else someone earlier."""
    if not view.committed:
        return None
    if waited_for_rollback_health or rollback_health_state == "committed":
        return BY_ROLLBACK_HEALTH
    return BY_EARLIER


def failed_checks_text(checks: Iterable[CheckResult]) -> str:
    parts = []
    for c in checks:
        if not c.ok:
            out = (c.stderr.strip() or c.stdout.strip())[-200:]
            parts.append(f"{c.command!r} exited {c.rc if c.rc is not None else 'without a result'}" + (f": {out}" if out else ""))
    return "; ".join(parts)


def health_preview(view: HealthView, expected_version: str | None, *, commands: int, commit: bool, rollback: bool,
                   device_timeout: int | None = None, hostapp: bool = False) -> tuple[bool, list[str]]:
    """Check mode of the health step: (changed, actions), as the real step would then report. Never
    fails: in a dry run of the whole update the device has not rebooted into the target, so the step
    says what it would do then.

    Before the update's reboot (the device does not run the target yet): the arm step writes the
    rollback-health breadcrumb, so after the reboot the device's own rollback-health checks and
    commits the update while the step waits, and the step reports no change (it commits itself only
    when rollback-health has not by the device_timeout; on a balenaOS device, ``hostapp``, never: it
    fails then). While rollback-health runs, the same. A device that runs the target, not committed
    and with nobody committing it: the step commits."""
    actions: list[str] = []
    within = f" within the device_timeout ({device_timeout} s)" if device_timeout is not None else ""
    device_commits = "waited for the device's rollback-health to check and commit the update"
    commits_itself = "committed it (rollback-stop) when rollback-health had not" + within
    if hostapp:
        commits_itself = "failed if rollback-health had not committed it" + within + " (on a balenaOS device the step never commits by itself)"
    changed = False
    if view.kind in (ROLLED_BACK, WRONG, NOT_BOOTED):
        actions.append(f"after the update's reboot, verified that the device runs {expected_version or 'the new OS'} (now: {view.msg})")
        if commit or hostapp:
            actions += [device_commits, commits_itself]
    elif view.kind == WAIT and (view.proceed_on_timeout or view.device_commits):
        actions.append(f"{device_commits} (now: {view.msg})")
        if commit or view.device_commits:
            actions.append(commits_itself)
    elif view.kind == WAIT:
        actions.append(f"waited for the device to settle ({view.msg})")
    elif commit and not view.committed:
        changed = True
        actions.append("committed the update (rollback-stop) when the checks passed"
                       + (", then ran the running OS's commit hooks (hostapp-update-hooks-v2 --commit)" if hostapp else ""))
    if commands:
        actions.append(f"ran {commands} health check command(s)")
        if rollback:
            actions.append("rolled back to the other root and rebooted when a check failed")
    return changed, actions
