# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Rebooting a device without Python and waiting for it: a new boot id, then a probe of what booted,
retrying while the connection comes back. Shared by the reboot step and the health step's rollback.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass

from ansible.errors import AnsibleError

from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, OsfleetError, error_text

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession


POLL_INTERVAL = 1.0
#: how often a rebooting device is asked for its boot id: a connection refused while it is down
#: costs next to nothing (a device that does not answer at all costs the connect timeout a poll
#: anyway), and the new boot is seen within a quarter of a second (a lab device is back within half
#: a second of its reboot; ``make bench``'s baseline polls every 0.5 s).
BOOT_POLL_INTERVAL = 0.25
#: the wait before the first ask: reboot.sh returns 0.3 s before its reboot starts, so that the
#: device is on its way down by then (an ask before would only read the old boot id)
FIRST_BOOT_POLL = 0.5


class Clock(t.Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class _SystemClock:
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK: Clock = _SystemClock()


@dataclass(frozen=True)
class RebootOutcome:
    boot_id_before: str
    boot_id: str
    elapsed: float


def transient(exc: BaseException) -> bool:
    """Errors expected while a device goes down and comes back."""
    return isinstance(exc, (AnsibleError, DeviceError, OSError))


def wait_for_new_boot(session: DeviceSession, old_boot_id: str, *, deadline: float, timeout: float, clock: Clock = SYSTEM_CLOCK) -> str:
    """Poll the boot id (connection errors expected while the device is down) until it differs."""
    last = "no answer yet"
    while True:
        try:
            res = session.run("boot_id", check=False, what="reading the boot id")
            boot_id = res.stdout.strip()
            if res.rc == 0 and boot_id and boot_id != old_boot_id:
                return boot_id
            last = "the boot id did not change" if res.rc == 0 else f"exit {res.rc}: {res.stderr.strip()[:200]}"
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if not transient(exc):
                raise
            last = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            session.reset_connection()
        if clock.monotonic() >= deadline:
            raise DeviceError(f"the device did not come back with a new boot id within {timeout:g} s ({last})")
        clock.sleep(BOOT_POLL_INTERVAL)


def reboot_and_wait(
    session: DeviceSession, boot_id_before: str, *, timeout: float, connect_timeout: int, clock: Clock = SYSTEM_CLOCK
) -> RebootOutcome:
    """Reboot the device (busybox ``reboot`` detached with setsid) and wait for a new boot id."""
    if not boot_id_before:
        raise DeviceError("cannot reboot safely: the device reports no boot id (/proc/sys/kernel/random/boot_id)")
    start = clock.monotonic()
    session.set_connect_timeout(connect_timeout)
    try:
        session.run("reboot", what="starting the reboot")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if isinstance(exc, DeviceError) or not transient(exc):
            raise
        # the connection may drop as the device goes down: the boot id tells
    session.reset_connection()
    clock.sleep(FIRST_BOOT_POLL)
    boot_id = wait_for_new_boot(session, boot_id_before, deadline=start + timeout, timeout=timeout, clock=clock)
    return RebootOutcome(boot_id_before=boot_id_before, boot_id=boot_id, elapsed=round(clock.monotonic() - start, 2))


T = t.TypeVar("T")


def retry_until(fn: t.Callable[[], T], session: DeviceSession, *, deadline: float, what: str, clock: Clock = SYSTEM_CLOCK) -> T:
    """Call ``fn`` until it succeeds; connection and device errors are retried (with a reconnect)
    until ``deadline``, then the last one is raised as a DeviceError naming ``what``."""
    while True:
        try:
            return fn()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if not transient(exc):
                raise
            if clock.monotonic() >= deadline:
                raise DeviceError(f"{what}: {error_text(exc)}") from exc
            session.reset_connection()
        clock.sleep(POLL_INTERVAL)


def reboot_and_report(
    session: DeviceSession, boot_id_before: str, *, timeout: float, connect_timeout: int, clock: Clock = SYSTEM_CLOCK
) -> tuple[RebootOutcome, DeviceState]:
    """Reboot, wait for the new boot, then probe what booted (retried: the device may still settle)."""
    start = clock.monotonic()
    outcome = reboot_and_wait(session, boot_id_before, timeout=timeout, connect_timeout=connect_timeout, clock=clock)
    after = retry_until(lambda: probe(session), session, deadline=start + timeout, what="probing the device after its reboot", clock=clock)
    return outcome, after


def booted_summary(dev: DeviceState) -> dict[str, t.Any]:
    """What runs: version, roots, markers, env (the ``device`` key of reboot and health)."""
    summary: dict[str, t.Any] = {
        "version": dev.version,
        "active_root": dev.active_label,
        "inactive_root": dev.inactive_label,
        "inactive_version": dev.inactive_os_release.get("VERSION", ""),
        "rollback_markers": list(dev.markers),
        "rollback_health_state": dev.rollback_health_state,
        "boot_id": dev.boot_id,
    }
    try:
        env = boot_state(dev)
    except (OsfleetError, ValueError):
        return summary
    summary["boot_env"] = {"resin_root_part": env.root_part, "upgrade_available": env.upgrade_available, "bootcount": env.bootcount}
    return summary
