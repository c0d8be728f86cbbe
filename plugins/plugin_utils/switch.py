# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Device side of the switch steps (bootfiles, bootenv, reboot, health): the shell scripts and
the helpers that run them.

* :data:`SWITCH_PROBE`: the switch steps' part of the device probe (same round trip): env file
  presence, rollback markers, and, when asked, sha256 + md5 + size of every file on the boot
  partition and in both roots' ``/resin-boot``, plus the boot partition's free bytes.
* :data:`APPLY_SCRIPT`: carries out a plan's file operations (``plan_switch.Op``) atomically:
  every new file is first written next to its destination as ``<dst>.osfleet-tmp``, all of them
  are synced, then renamed in plan order, removals done, synced again. If a write fails (a full
  partition), the temporaries are removed and nothing has changed.
* :func:`reboot_and_wait`: reboots a device without Python and waits for a new boot id; shared by
  the reboot step and the health step's rollback.

Every value reaches the device as a positional argument of a constant script.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass

from ansible.errors import AnsibleError

from ansible_collections.osfleet.hup.plugins.plugin_utils import plan_switch
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Release, load_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, boot_state, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, OsfleetError, PlanError

#: body of the probe's ``osfleet_probe_extra`` function; ``$1 = files`` lists the boot files
SWITCH_PROBE = r"""
sw_want=${1:-}
sw_rd() { if [ -f "$1" ]; then cat "$1"; fi; }
sw_has() { if [ -e "$1" ]; then echo 1; else echo 0; fi; }
sw_sha() { if [ "$sw_want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . -type f -exec sha256sum {} + 2>/dev/null); fi; }
sw_md5() { if [ "$sw_want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . -type f -exec md5sum {} + 2>/dev/null); fi; }
sw_size() { if [ "$sw_want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . -type f -exec stat -L -c '%s %n' {} + 2>/dev/null); fi; }
sw_nl='
'
sw_other() { if [ "$sw_want" = files ] && [ -d "$1" ]; then (cd "$1" && find -L . \( ! -type f ! -type d \) -o -name "*$sw_nl*" 2>/dev/null); fi; }
sw_listed=0; sw_statfs=""
if [ "$sw_want" = files ]; then sw_listed=1; sw_statfs=$(stat -f -c '%a %S' /mnt/boot 2>/dev/null); fi
sw_a=/mnt/sysroot/active/resin-boot; sw_i=/mnt/sysroot/inactive/resin-boot
jq -cn \
  --arg listed "$sw_listed" --arg boot_statfs "$sw_statfs" \
  --arg bootcount_present "$(sw_has /mnt/boot/bootcount.env)" \
  --arg health_variables_present "$(sw_has /mnt/state/rollback-health-variables)" \
  --arg health_variables "$(sw_rd /mnt/state/rollback-health-variables)" \
  --arg rollback_marker_present "$(sw_has /mnt/state/osfleet-rollback)" \
  --arg rollback_marker "$(sw_rd /mnt/state/osfleet-rollback)" \
  --arg boot_sha "$(sw_sha /mnt/boot)" --arg boot_md5 "$(sw_md5 /mnt/boot)" --arg boot_size "$(sw_size /mnt/boot)" --arg boot_other "$(sw_other /mnt/boot)" \
  --arg active_present "$(sw_has "$sw_a")" --arg active_sha "$(sw_sha "$sw_a")" --arg active_md5 "$(sw_md5 "$sw_a")" \
  --arg active_size "$(sw_size "$sw_a")" --arg active_other "$(sw_other "$sw_a")" \
  --arg inactive_present "$(sw_has "$sw_i")" --arg inactive_sha "$(sw_sha "$sw_i")" --arg inactive_md5 "$(sw_md5 "$sw_i")" \
  --arg inactive_size "$(sw_size "$sw_i")" --arg inactive_other "$(sw_other "$sw_i")" \
  '$ARGS.named'
"""

#: ``$@``: triples ``op dst value`` (plan_switch.Op)
APPLY_SCRIPT = r"""
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
T=.osfleet-tmp
die() { echo "$*" >&2; exit 1; }
check() {
  [ $(( $# % 3 )) -eq 0 ] || die "file operations come in triples"
  while [ $# -gt 0 ]; do
    case "$2" in /mnt/boot/?*|/mnt/state/?*) ;; *) die "refusing to write $2";; esac
    case "$2" in */../*|*/..|*/./*|*//*) die "refusing the path $2";; esac
    [ -d "$2" ] && die "$2 is a directory"
    case "$1" in
      put|del) ;;
      copy) [ -f "$3" ] || die "the source $3 is missing";;
      *) die "unknown file operation $1";;
    esac
    shift 3
  done
}
unstage() { while [ $# -gt 0 ]; do case "$1" in put|copy) rm -f "$2$T";; esac; shift 3; done; }
stage() {
  while [ $# -gt 0 ]; do
    case "$1" in
      put) mkdir -p "$(dirname "$2")" && printf '%s' "$3" > "$2$T" || { echo "cannot write $2$T" >&2; return 1; };;
      copy) mkdir -p "$(dirname "$2")" && cat "$3" > "$2$T" || { echo "cannot copy $3 to $2$T" >&2; return 1; };;
    esac
    shift 3
  done
}
commit() {
  while [ $# -gt 0 ]; do
    case "$1" in
      put|copy) mv -f "$2$T" "$2" || return 1;;
      del) rm -f "$2" || return 1;;
    esac
    shift 3
  done
}
check "$@"
if ! stage "$@"; then unstage "$@"; sync; die "writing the new files failed; nothing was changed"; fi
sync
commit "$@" || { sync; die "renaming the new files into place failed part way"; }
sync
"""

REBOOT_SCRIPT = "setsid sh -c 'sleep 1; reboot' >/dev/null 2>&1 </dev/null & sleep 0.5"
BOOT_ID_SCRIPT = "cat /proc/sys/kernel/random/boot_id"
POLL_INTERVAL = 1.0


class Clock(t.Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class _SystemClock:
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK: Clock = _SystemClock()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def target_release(args: t.Mapping[str, t.Any], dev: DeviceState) -> Release | None:
    """The release named by the optional release options (``catalog`` + ``target_version``), or None."""
    if not args.get("catalog"):
        return None
    if not args.get("target_version"):
        raise PlanError("catalog is given without target_version: name the release to check against")
    device_type = args.get("device_type") or dev.device_type
    return load_catalog(str(args["catalog"])).release(device_type, str(args["target_version"]))


def probe_switch(session: t.Any, *, listed: bool) -> tuple[DeviceState, plan_switch.SwitchProbe]:
    """The device probe plus the switch probe, one round trip. ``listed`` hashes the boot files."""
    state = probe(session, SWITCH_PROBE, "files" if listed else "")
    return state, plan_switch.parse_switch_probe(state.extra)


def apply_ops(session: t.Any, ops: list[plan_switch.Op], what: str = "writing the files") -> None:
    """Carry out file operations on the device (one round trip)."""
    if not ops:
        return
    plan_switch.validate_ops(ops)
    args = [value for op in ops for value in op]
    session.run(APPLY_SCRIPT, *args, what=what)


# --- reboot and reconnect ------------------------------------------------------------------------

@dataclass(frozen=True)
class RebootOutcome:
    boot_id_before: str
    boot_id: str
    elapsed: float


def transient(exc: BaseException) -> bool:
    """Errors expected while a device goes down and comes back."""
    return isinstance(exc, (AnsibleError, DeviceError, OSError))


def wait_for_new_boot(session: t.Any, old_boot_id: str, *, deadline: float, timeout: float, clock: Clock = SYSTEM_CLOCK) -> str:
    """Poll the boot id (connection errors expected while the device is down) until it differs."""
    last = "no answer yet"
    while True:
        try:
            res = session.run(BOOT_ID_SCRIPT, check=False, what="reading the boot id")
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
        clock.sleep(POLL_INTERVAL)


def reboot_and_wait(
    session: t.Any, boot_id_before: str, *, timeout: float, connect_timeout: int, clock: Clock = SYSTEM_CLOCK
) -> RebootOutcome:
    """Reboot the device (busybox ``reboot`` detached with setsid) and wait for a new boot id."""
    if not boot_id_before:
        raise DeviceError("cannot reboot safely: the device reports no boot id (/proc/sys/kernel/random/boot_id)")
    start = clock.monotonic()
    session.set_connect_timeout(connect_timeout)
    try:
        session.run(REBOOT_SCRIPT, what="starting the reboot")
    except Exception as exc:  # pylint: disable=broad-exception-caught
        if isinstance(exc, DeviceError) or not transient(exc):
            raise
        # the connection may drop as the device goes down: the boot id tells
    session.reset_connection()
    clock.sleep(POLL_INTERVAL)
    boot_id = wait_for_new_boot(session, boot_id_before, deadline=start + timeout, timeout=timeout, clock=clock)
    return RebootOutcome(boot_id_before=boot_id_before, boot_id=boot_id, elapsed=round(clock.monotonic() - start, 2))


T = t.TypeVar("T")


def retry_until(fn: t.Callable[[], T], session: t.Any, *, deadline: float, what: str, clock: Clock = SYSTEM_CLOCK) -> T:
    """Call ``fn`` until it succeeds; connection and device errors are retried (with a reconnect)
    until ``deadline``, then the last one is raised as a DeviceError naming ``what``."""
    while True:
        try:
            return fn()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            if not transient(exc):
                raise
            if clock.monotonic() >= deadline:
                raise DeviceError(f"{what}: {exc}") from exc
            session.reset_connection()
        clock.sleep(POLL_INTERVAL)


def reboot_and_report(
    session: t.Any, boot_id_before: str, *, timeout: float, connect_timeout: int, clock: Clock = SYSTEM_CLOCK
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
