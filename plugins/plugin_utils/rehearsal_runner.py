# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The controller side of a rehearsal drill (module osfleet.hup.rehearsal): the update runs as
child ``ansible-playbook`` processes of the rehearsal, limited to the one device, watched for the
moment to interrupt them (a task header on their output), and the operator's commands (power
cut, power on, link, faults, reflash) run with ``sh -c``.

Only processes this module started are ever signalled: the child ``ansible-playbook`` (started in
a session of its own) and what descends from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing as t
from dataclasses import dataclass, field

#: the task headers (role, task name) that mark the moments the drills interrupt
MOMENTS = {
    "write": ("standard", "Write the inactive root partition"),
    "bootfiles": ("standard", "Copy the new boot files"),
    # the advanced update: the disk image and the kept files staged in RAM, before the disk write
    "staged": ("advanced", "Check the device and stage the disk image"),
}
_RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)")
_METHOD = re.compile(r"(?:\\n|\s)method (?P<method>[a-z_]+)[;, ]")
#: the standard role's failure message of a device rolled back (its reason: health, altboot, checks)
_ROLLED_BACK = re.compile(r" -- rolled back \((?P<reason>[a-z_]+)\)")


@dataclass
class Run:
    """One child ansible-playbook run."""

    argv: list[str]
    rc: int
    duration: float
    output: str
    hit_at: float | None = None
    recap: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return int(self.recap.get("changed", 0))

    def method(self) -> str | None:
        found = _METHOD.search(self.output)
        return found.group("method") if found else None

    def rolled_back(self) -> str | None:
        """The reason of the rollback the run reported, or None."""
        found = _ROLLED_BACK.search(self.output)
        return found.group("reason") if found else None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.strip().splitlines()[-lines:])


def ansible_playbook_path() -> str:
    """The ansible-playbook of the running Ansible (the worker's argv[0] is its parent's)."""
    here = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "ansible-playbook")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    found = shutil.which("ansible-playbook")
    if not found:
        raise FileNotFoundError("ansible-playbook not found (next to the running Ansible nor on PATH)")
    return found


def parse_recap(output: str, host: str) -> dict[str, int]:
    for line in reversed(output.splitlines()):
        found = _RECAP.match(line.strip())
        if found and found.group("host") == host:
            return {k: int(v) for k, v in found.groupdict().items() if k != "host"}
    return {}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                stat = handle.read()
        except OSError:
            continue
        tree.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return tree


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """The child controller gone as a whole, as when its machine dies: it and every process that
    descends from it (its workers run in sessions of their own, so not in its process group) are
    stopped as they are found (they can fork no more), then killed."""
    found: list[int] = []
    todo = [proc.pid]
    for _round in range(10):  # bounded: stopped processes fork no new ones
        if not todo:
            break
        for pid in todo:
            try:
                os.kill(pid, signal.SIGSTOP)
                found.append(pid)
            except ProcessLookupError:
                continue
        tree = _children()
        todo = [c for pid in found for c in tree.get(pid, []) if c not in found]
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_playbook(argv: list[str], *, host: str, workdir: str, name: str, timeout: float,
                 moment: str | None = None, delay: float = 0.0, on_moment: t.Callable[[subprocess.Popen[str]], None] | None = None,
                 env: t.Mapping[str, str] | None = None) -> Run:
    """Run ``argv`` (an ansible-playbook command line), its output in ``workdir/<name>.log``. With
    ``moment`` (a key of :data:`MOMENTS`): once that task's header is printed, wait ``delay``
    seconds and call ``on_moment(process)`` (once). Killed when it runs longer than ``timeout``."""
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, f"{name}.log")
    # the child's own output is read here: the callbacks the rehearsal's run enabled do not see it
    child_env = {k: v for k, v in os.environ.items() if k not in ("ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_CALLBACK_WHITELIST")}
    child_env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                      "ANSIBLE_STDOUT_CALLBACK": "default", **(env or {})})
    header = f"TASK [osfleet.hup.{MOMENTS[moment][0]} : {MOMENTS[moment][1]}" if moment else None
    start = time.monotonic()
    hit_at = None
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env, cwd=workdir,
                                text=True, start_new_session=True)
        try:
            while proc.poll() is None:
                if header and hit_at is None and on_moment is not None:
                    with open(log, encoding="utf-8", errors="replace") as handle:
                        seen = header in handle.read()
                    if seen:
                        time.sleep(delay)
                        hit_at = time.time()
                        on_moment(proc)
                if time.monotonic() - start > timeout:
                    kill_tree(proc)
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
            proc.wait()
    with open(log, encoding="utf-8", errors="replace") as handle:
        output = handle.read()
    if time.monotonic() - start > timeout:
        output += f"\n[osfleet.hup.rehearsal: killed after {timeout:g} s]\n"
    return Run(argv, int(proc.returncode), round(time.monotonic() - start, 1), output, hit_at, parse_recap(output, host))


def playbook_argv(inventories: t.Sequence[str], host: str, extra_vars: t.Mapping[str, t.Any], workdir: str, name: str,
                  playbook: str = "osfleet.hup.update", check: bool = False) -> list[str]:
    """An update run of ``host`` alone; the extra vars in a file (JSON), so no value meets a shell."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"{name}.vars.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(dict(extra_vars), handle)
    argv = [ansible_playbook_path()]
    for inventory in inventories:
        argv += ["-i", inventory]
    return [*argv, playbook, "--limit", host, "-e", f"@{path}", *(["--check"] if check else [])]


def run_name(argv: t.Sequence[str]) -> str:
    """The name :func:`playbook_argv` gave the run (its vars file ``@<workdir>/<name>.vars.json``)."""
    path = next((a for a in reversed(argv) if a.startswith("@") and a.endswith(".vars.json")), "")
    return os.path.basename(path[1:])[: -len(".vars.json")] if path else ""


@dataclass
class CommandRun:
    command: str
    rc: int
    output: str
    duration: float


def run_command(command: str, *, device: str, version: str = "", timeout: float = 600) -> CommandRun:
    """One of the operator's commands (hup_rehearsal_commands) on the controller, with ``sh -c``;
    the device's name and the version at stake in HUP_REHEARSAL_DEVICE and HUP_REHEARSAL_VERSION."""
    start = time.monotonic()
    env = {**os.environ, "HUP_REHEARSAL_DEVICE": device, "HUP_REHEARSAL_VERSION": version}
    try:
        proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)
        rc, output = proc.returncode, (proc.stdout + proc.stderr).strip()
    except subprocess.TimeoutExpired:
        rc, output = 124, f"did not end within {timeout:g} s"
    return CommandRun(command, rc, output[-2000:], round(time.monotonic() - start, 1))
