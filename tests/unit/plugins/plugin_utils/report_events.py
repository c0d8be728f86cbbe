# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Event sequences of the standard role, as the callback osfleet.hup.report feeds them to ReportBuilder.

Each helper plays one device's run at a fake clock (one second per task), with the results the
steps return (docs/internals.md §5), so the tests of the model and of the rendered pages share them.
"""

from __future__ import annotations

import itertools
import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import ReportBuilder

START = 1_800_000_000.0
SOURCE, TARGET = "2.88.4", "2.113.0"
STEPS = ["lock", "supervisor stopped", "fetch", "rootfs", "bootfiles", "supervisor updated", "bootenv armed", "reboot", "health",
         "supervisor started", "lock released"]
MODULES = {"lock": "lock", "supervisor stopped": "supervisor", "fetch": "fetch", "rootfs": "rootfs", "bootfiles": "bootfiles",
           "supervisor updated": "supervisor", "bootenv armed": "bootenv", "reboot": "reboot", "health": "health",
           "supervisor started": "supervisor", "lock released": "lock"}


class Clock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


_ids = itertools.count()


def task(b: ReportBuilder, clock: Clock, host: str, module: str, status: str = "ok", *, step: str | None = None,
         result: dict[str, t.Any] | None = None, args: dict[str, t.Any] | None = None, name: str = "",
         ignore_errors: bool = False, seconds: float = 1.0) -> None:
    task_id = f"task-{next(_ids)}"
    name = name or f"task {step or module}"
    b.task_start(host, task_id, name, module, step, clock.now)
    clock.tick(seconds)
    b.task_result(host, task_id, status, task=name, module=module, step=step, result=result or {"changed": False},
                  args=args, when=clock.now, ignore_errors=ignore_errors)


def set_fact(b: ReportBuilder, clock: Clock, host: str, **facts: t.Any) -> None:
    task(b, clock, host, "ansible.builtin.set_fact", result={"changed": False, "ansible_facts": facts}, seconds=0.01)


def preflight(b: ReportBuilder, clock: Clock, host: str, phase: str = "needed", version: str = SOURCE,
              target: str = TARGET, status: str = "ok", msg: str = "") -> None:
    set_fact(b, clock, host, hup_run_id_effective="20261201T100000Z-ab12")
    set_fact(b, clock, host, hup_run_log="/mnt/data/balenahup/osfleet-hup.20261201T100000Z-ab12.log", hup_locked=False)
    result: dict[str, t.Any] = {"changed": False}
    if status == "ok":
        result.update(phase=phase, method="balenahup", release={"version": target, "digest": "sha256:aa"},
                      device={"version": version, "device_type": "genericx86-64-ext"})
    else:
        result.update(failed=True, msg=f"{host}: {msg}")
    task(b, clock, host, "osfleet.hup.preflight", status, result=result, args={"target_version": target})


def committed_run(b: ReportBuilder, clock: Clock, host: str, *, source: str = "delta", nbytes: int = 1843200) -> None:
    preflight(b, clock, host)
    for step in STEPS:
        result: dict[str, t.Any] = {"changed": True}
        if step == "fetch":
            result.update(source=source, bytes=nbytes, cached=False)
        if step == "reboot":
            result["device"] = {"version": TARGET}
        if step == "health":
            result.update(committed=True, rolled_back=False, device={"version": TARGET, "device_type": "genericx86-64-ext"})
        task(b, clock, host, "osfleet.hup." + MODULES[step], step=step, result=result, seconds=5 if step == "fetch" else 1)
    task(b, clock, host, "ansible.builtin.debug", result={"changed": False, "msg": "done"})


def rescue(b: ReportBuilder, clock: Clock, host: str, step: str, msg: str, *, rolled_back: bool = False, reason: str = "") -> None:
    set_fact(b, clock, host, hup_failure={"step": step, "msg": msg, "rolled_back": rolled_back, "rollback_reason": reason})
    task(b, clock, host, "osfleet.hup.bootenv", name="Put the old OS's boot files and env back", result={"changed": False})
    task(b, clock, host, "osfleet.hup.supervisor", name="Start the supervisor again", result={"changed": True})
    task(b, clock, host, "osfleet.hup.lock", name="Release the update lock", result={"changed": True})
    task(b, clock, host, "ansible.builtin.fail", "failed", name="Fail the device with the reason",
         result={"failed": True, "msg": f"{host}: host OS update to {TARGET} failed at step {step}: {msg} -- nothing switched"})


def failed_fetch_run(b: ReportBuilder, clock: Clock, host: str) -> None:
    preflight(b, clock, host)
    for step in STEPS[:2]:
        task(b, clock, host, "osfleet.hup." + MODULES[step], step=step, result={"changed": True})
    msg = "no source worked: delta (manifest unknown), registry (connection refused)"
    task(b, clock, host, "osfleet.hup.fetch", "failed", step="fetch", result={"failed": True, "msg": f"{host}: {msg}"})
    rescue(b, clock, host, "fetch", msg)


def rolled_back_run(b: ReportBuilder, clock: Clock, host: str) -> None:
    preflight(b, clock, host, target="2.115.0")
    for step in STEPS[:8]:
        fetched = {"source": "registry", "bytes": 9000} if step == "fetch" else {}
        task(b, clock, host, "osfleet.hup." + MODULES[step], step=step, result={"changed": True, **fetched})
    msg = "rolled back (health): the device's health checks failed; it runs 2.88.4 again"
    task(b, clock, host, "osfleet.hup.health", "failed", step="health",
         result={"failed": True, "changed": True, "rolled_back": True, "rollback_reason": "health", "committed": False,
                 "msg": f"{host}: {msg}", "device": {"version": "2.115.0"}})
    set_fact(b, clock, host, hup_failure={"step": "health", "msg": msg, "rolled_back": "True", "rollback_reason": "health"})
    task(b, clock, host, "ansible.builtin.fail", "failed", result={"failed": True, "msg": f"{host}: ... rolled back (health)"})
