# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The device-side watchdog of an update run (``scripts/watchdog.sh``).

The lock step starts it when it takes (or resumes) the run's lock with a ``watchdog_timeout``;
it holds ``/var/lock/resinhup.lock`` for the run and refreshes the run's lock while the
controller is heard from (every device script of a step given the ``run_id`` sends a heartbeat,
``scripts/_lib.sh``). When nothing was heard for ``watchdog_timeout`` seconds (a killed
controller, Ctrl-C, a lost link) it puts back an env the run armed (the operations stored by
:func:`store_disarm`; on a balenaOS device, where the new OS's hooks armed it, the running OS's
hooks, :func:`store_disarm_hooks`), starts the supervisor again, records in the lock that its run was
interrupted and ends. Releasing the lock stops it. The lock step starts and stops it within its
one round trip (``scripts/lock_step.sh``, with :func:`script_texts`).
"""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession
    from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import Op


def script_texts() -> dict[str, str]:
    """The scripts the watchdog runs on the device (``scripts/watchdog.sh`` and ``apply.sh``), by role."""
    return {"watchdog": shell.load("watchdog").text, "apply": shell.load("apply").text}


def store_disarm(session: DeviceSession, run_id: str | None, ops: t.Sequence[Op]) -> bool:
    """Give the run's watchdog the file operations that disarm the switch; False when no watchdog watches the run."""
    if not run_id:
        return False
    res = session.run("watchdog_ctl", op="disarm", run=run_id, ops=[list(op) for op in ops], what="telling the watchdog how to disarm")
    return res.stdout.strip() == "stored"


def store_disarm_hooks(session: DeviceSession, run_id: str | None) -> bool:
    """On a balenaOS (hostapp) device, where the new OS's hooks armed the env: have the run's watchdog
    put it back with the running OS's hooks (``DURING_UPDATE=0 hostapp-update-hooks``) when it fires;
    False when no watchdog watches the run."""
    if not run_id:
        return False
    res = session.run("watchdog_ctl", op="disarm_hooks", run=run_id, ops=[], what="telling the watchdog how to disarm")
    return res.stdout.strip() == "stored"


#: what the lock step's stop of the watchdog printed (scripts/_lib.sh osfleet_watchdog_stop)
STOP_WORDS = ("stopped", "killed", "alive", "lock-held", "none")


def judge_stop(word: str, run_id: str) -> tuple[str, str]:
    """The release's stop of the run's watchdog, as the lock step words it: an action line (or "")
    and a problem (or "": the step fails with it, the lock being released all the same).

    ``stopped`` (on SIGTERM) and ``none`` say nothing more; ``killed``: it did not end within 5 s of
    SIGTERM and SIGKILL ended it; ``alive``: it is still there after SIGKILL; ``lock-held``: it
    ended, but /var/lock/resinhup.lock is still held 10 s later (another updater would wait)."""
    if word == "killed":
        return (f"the watchdog of run {run_id} did not end within 5 s of SIGTERM: SIGKILL ended it", "")
    if word == "alive":
        return ("", f"the lock is released, but the device-side watchdog of run {run_id} is still running after SIGTERM and SIGKILL "
                    f"(/run/osfleet/watchdog/pid): /var/lock/resinhup.lock stays held while it runs; it ends by itself once it sees the "
                    f"lock gone, else reboot the device")
    if word == "lock-held":
        return ("", f"the lock is released and the device-side watchdog of run {run_id} ended, but /var/lock/resinhup.lock is still held "
                    f"10 s later (a command the watchdog started still runs): another updater waits until it ends")
    if word not in STOP_WORDS:
        return ("", f"the stop of the device-side watchdog of run {run_id} printed {word!r}, not one of {', '.join(STOP_WORDS)}")
    return ("", "")
