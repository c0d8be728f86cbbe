# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Integration test harness: real labs (tests/lab/labctl) and real ansible-playbook runs.

The fixtures (``make_lab``, ``lab``, ``ansible_playbook``) are in conftest.py.

* :class:`Lab`: the lab's command line (exec, powercut, poweron, status) plus device probes that
  read the device directly over SSH, never through the playbook's output.
* :func:`ansible_playbook`: runs ansible-playbook with the test callback ``osfleet_events``, which
  writes every task start and result as a JSON line; the run can be killed (SIGKILL of its
  whole process group) or a device's power cut when an event predicate first holds.

Needs root (loop devices, namespaces) and the collection at
``$ANSIBLE_COLLECTIONS_PATH/ansible_collections/osfleet/hup`` (``make collection-link``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import typing as t
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
LABCTL = REPO_ROOT / "tests" / "lab" / "labctl"
sys.path.insert(0, str(LABCTL.parent))
from osfleet_lab import lab as lab_core  # noqa: E402  (labctl's own code: the ssh argv of `labctl exec`)
CALLBACK_DIR = Path(__file__).resolve().parent / "callback_plugins"
VENV_BIN = Path(sys.executable).parent
SSH_ATTEMPTS = 3

#: the steps of the standard role (its ``hup_step`` task var) and the names of their tasks
STEP_TASKS = {
    "lock": "Take the update lock",
    "supervisor stopped": "Stop the supervisor",
    "fetch": "Fetch the target image",
    "rootfs": "Write the inactive root partition",
    "bootfiles": "Copy the new boot files",
    "supervisor updated": "Update the supervisor",
    "bootenv armed": "Arm the bootloader",
    "reboot": "Reboot into the new OS",
    "health": "Verify the new OS",
}

#: the lab's release definitions (its partition layouts)
RELEASES_JSON = REPO_ROOT / "tests" / "lab" / "osfleet_lab" / "releases.json"
#: what a whole-disk write changes and anything before it must not: the OS that runs, the boot, the
#: boot partition's files (sha256), and on the last line the disk's partition table (``sfdisk -J``:
#: start, size and name of each partition)
DISK_PROBE = r"""
echo "os: $(sed -n 's/^VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
echo "boot: $(cat /proc/sys/kernel/random/boot_id)"
(cd /mnt/boot && find . -type f | sort | xargs sha256sum)
d=$(readlink -f /dev/disk/by-partlabel/resin-boot); d=${d##*/}; d=${d%p*}
sfdisk -J "/dev/$d" | jq -c '[.partitiontable.partitions[] | {start, size, name}]'
"""


def layout_table(layout_id: str) -> list[dict[str, t.Any]]:
    """A lab layout as the partition table of its disk image, as ``Lab.partition_table`` reads it
    (sectors; the first partition at 1 MiB)."""
    start, out = 2048, []
    for name, mib in json.loads(RELEASES_JSON.read_text())["layouts"][layout_id]:
        out.append({"start": start, "size": mib << 11, "name": name})
        start += mib << 11
    return out


def collections_path() -> str:
    """Where ansible finds osfleet.hup (the Makefile's link build/collections unless set)."""
    path = os.environ.get("ANSIBLE_COLLECTIONS_PATH") or str(REPO_ROOT / "build" / "collections")
    for entry in path.split(os.pathsep):
        if (Path(entry) / "ansible_collections" / "osfleet" / "hup" / "galaxy.yml").exists():
            return path
    raise RuntimeError(f"osfleet.hup is not installed under {path!r}: run `make collection-link` first")


# --- the lab ------------------------------------------------------------------------------------

# One round trip: what the tests check after an update, read from the device itself.
STATE_SCRIPT = r"""
. /etc/os-release
root=$(awk '$2=="/" {d=$1} END {print d}' /proc/mounts)
# a balenaos device's / is an overlay of its hostapp: its root partition is at /mnt/sysroot/active
case $root in /dev/*) ;; *) root=$(awk '$2=="/mnt/sysroot/active" {d=$1} END {print d}' /proc/mounts) ;; esac
root=$(readlink -f "$root")
active=""
for l in resin-rootA resin-rootB; do
  [ "$(readlink -f /dev/disk/by-partlabel/$l)" = "$root" ] && active=$l
done
markers=""
for m in /mnt/state/rollback-*; do [ -e "$m" ] && markers="$markers ${m##*/}"; done
sv() { sed -n 's/^SUPERVISOR_VERSION=v\{0,1\}//p' "$1" 2>/dev/null | tr -d '"'; }
svc() { systemctl is-active "$1" >/dev/null 2>&1 && echo active || echo inactive; }
jq -n --arg version "$VERSION" --arg active_root "$active" \
  --arg boot_id "$(cat /proc/sys/kernel/random/boot_id)" \
  --arg uenv "$(cat /mnt/boot/resinOS_uEnv.txt 2>/dev/null)" \
  --arg bootcount "$(cat /mnt/boot/bootcount.env 2>/dev/null)" \
  --arg markers "$markers" \
  --arg supervisor_running "$(sv /mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf)" \
  --arg supervisor_active "$(svc balena-supervisor)" --arg user_app "$(svc user-app)" \
  --arg lock "$(cat /mnt/state/osfleet/hup.lock 2>/dev/null)" \
  --arg inactive_stamp "$(cat /mnt/sysroot/inactive/.osfleet-release.json 2>/dev/null)" \
  '$ARGS.named'
"""


@dataclass
class DeviceState:
    version: str
    active_root: str
    boot_id: str
    env: dict[str, str]
    markers: list[str]
    supervisor_running: str
    supervisor_active: bool
    user_app_active: bool
    lock: str
    inactive_stamp: dict[str, t.Any] | None

    @property
    def committed(self) -> bool:
        """No update pending: not armed and no rollback breadcrumb."""
        return self.env.get("upgrade_available", "0") == "0" and not any(m.endswith("breadcrumb") for m in self.markers)


def _kv(text: str) -> dict[str, str]:
    return dict(line.strip().split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class Lab:
    """A running lab: prefix, inventory and the device names (inventory host names)."""

    prefix: str
    inventory: Path
    hosts: list[str]
    host_vars: dict[str, dict[str, t.Any]] = field(default_factory=dict)
    group_vars: dict[str, t.Any] = field(default_factory=dict)

    @classmethod
    def from_inventory(cls, prefix: str, inventory: Path) -> Lab:
        data = yaml.safe_load(inventory.read_text())
        hosts: dict[str, dict[str, t.Any]] = {}
        group_vars: dict[str, t.Any] = {}

        def walk(group: dict[str, t.Any]) -> None:
            group_vars.update(group.get("vars") or {})
            for name, hvars in (group.get("hosts") or {}).items():  # a host in two groups (rehearsal): its vars merged
                hosts.setdefault(name, {}).update(hvars or {})
            for child in (group.get("children") or {}).values():
                walk(child or {})

        walk(data["all"])
        return cls(prefix, inventory, sorted(hosts), hosts, group_vars)

    # -- labctl
    def labctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(LABCTL), *args[:1], "--prefix", self.prefix, *args[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        return proc

    def exec(self, host: str, command: str, *, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``labctl exec HOST -- COMMAND``, with labctl's own ssh argv but without a labctl process
        (a Python start-up per device command was a good part of the suite's CPU time)."""
        argv = lab_core.exec_argv(lab_core.Lab(self.prefix), host, [command])
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{host}: device command timed out after {timeout} s: {command[:200]!r}") from exc

    def sh(self, host: str, script: str, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a POSIX sh script on the device (values as positional parameters $1..)."""
        command = shlex.join(["sh", "-c", script, "sh", *args])
        for attempt in range(SSH_ATTEMPTS):
            proc = self.exec(host, command, timeout=timeout)
            # 255: ssh itself failed (e.g. a connection reset while the device is busy); retry that only
            if proc.returncode != 255 or attempt == SSH_ATTEMPTS - 1:
                break
            time.sleep(0.5 * (attempt + 1))
        if check and proc.returncode != 0:
            raise RuntimeError(f"{host}: device command failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]} {script[:200]!r}")
        return proc.stdout

    def run_script(self, host: str, name: str, timeout: float = 300, **params: t.Any) -> subprocess.CompletedProcess[str]:
        """Run the collection's device script ``name`` (``plugins/plugin_utils/scripts/<name>.sh``,
        with the library functions it needs) on the device, its parameters by name, as a step
        would; for the tests of the guards inside the scripts."""
        from ansible_collections.osfleet.hup.plugins.plugin_utils import shell

        argv, stdin = shell.load(name).argv(**params)
        return self.exec(host, shlex.join(argv), stdin=stdin or "", timeout=timeout)

    def powercut(self, host: str) -> None:
        self.labctl("powercut", host)

    def link(self, host: str, state: str) -> None:
        """Cut (``down``) or restore (``up``) the device's SSH link; the device runs on (labctl link)."""
        self.labctl("link", host, state)

    def poweron(self, host: str) -> None:
        self.labctl("poweron", host, timeout=180)

    def fault(self, host: str, kind: str) -> str:
        """Give the device a fault that makes its next host OS updates fail until cleared
        (``health``, ``boot``, ``registry``, ``full``), or clear every fault (``clear``); returns
        labctl's line (labctl fault, docs/internals.md §4)."""
        return self.labctl("fault", host, kind).stdout.strip()

    def status(self) -> list[dict[str, t.Any]]:
        return t.cast(list[dict[str, t.Any]], json.loads(self.labctl("status", "--json").stdout))

    def catalog(self) -> dict[str, t.Any]:
        return t.cast(dict[str, t.Any], json.loads(Path(self.group_vars["hup_catalog"]).read_text()))

    def release(self, version: str, device_type: str = "genericx86-64-ext") -> dict[str, t.Any]:
        for rel in self.catalog()["releases"]:
            if rel["version"] == version and rel["device_type"] == device_type:
                return t.cast(dict[str, t.Any], rel)
        raise KeyError(f"no release {device_type} {version} in the lab catalog")

    # -- device probes
    def state(self, host: str) -> DeviceState:
        raw = json.loads(self.sh(host, STATE_SCRIPT))
        stamp = raw["inactive_stamp"].strip()
        return DeviceState(
            version=raw["version"],
            active_root=raw["active_root"],
            boot_id=raw["boot_id"].strip(),
            env={**_kv(raw["uenv"]), **_kv(raw["bootcount"])},
            markers=raw["markers"].split(),
            supervisor_running=raw["supervisor_running"].strip(),
            supervisor_active=raw["supervisor_active"] == "active",
            user_app_active=raw["user_app"] == "active",
            lock=raw["lock"].strip(),
            inactive_stamp=json.loads(stamp) if stamp else None,
        )

    def sha256_tree(self, host: str, directory: str, exclude: t.Sequence[str] = ()) -> dict[str, str]:
        """sha256 of every regular file under ``directory`` (relative paths), minus ``exclude`` prefixes."""
        script = 'cd "$1" && find . -type f | sort | while IFS= read -r f; do sha256sum "$f"; done'
        out: dict[str, str] = {}
        for line in self.sh(host, script, directory).splitlines():
            digest, _sep, name = line.partition("  ")
            name = name[2:] if name.startswith("./") else name
            if not any(name == e or name.startswith(e.rstrip("/") + "/") for e in exclude):
                out[name] = digest
        return out

    def read(self, host: str, path: str) -> str:
        return self.sh(host, 'cat "$1"', path)

    def disk(self, host: str) -> str:
        """The device's ``DISK_PROBE``."""
        return self.sh(host, DISK_PROBE)

    def partition_table(self, host: str) -> list[dict[str, t.Any]]:
        """The partition table of the device's disk (``DISK_PROBE``'s last line)."""
        return t.cast(list[dict[str, t.Any]], json.loads(self.disk(host).strip().splitlines()[-1]))

    def run_logs(self, host: str) -> dict[str, list[dict[str, t.Any]]]:
        """The run logs in /mnt/data/balenahup: file name -> parsed JSON lines."""
        script = 'for f in /mnt/data/balenahup/osfleet-hup.*.log; do [ -f "$f" ] && printf "==> %s\\n" "${f##*/}" && cat "$f"; done; true'
        logs: dict[str, list[dict[str, t.Any]]] = {}
        current: list[dict[str, t.Any]] | None = None
        for line in self.sh(host, script).splitlines():
            if line.startswith("==> "):
                current = logs.setdefault(line[4:], [])
            elif line.strip() and current is not None:
                current.append(json.loads(line))
        return logs


def labctl_down(prefix: str) -> None:
    """Take the lab ``prefix`` down (nothing to do when there is none)."""
    subprocess.run([str(LABCTL), "down", "--prefix", prefix], capture_output=True, timeout=300, check=False, stdin=subprocess.DEVNULL)


def labctl_up(prefix: str, devices: int, os_version: str | None, *extra: str) -> Path:
    """Bring a lab up (``extra``: more ``labctl up`` options); returns its inventory. A failed ``up``
    is taken down again and raised."""
    argv = [str(LABCTL), "up", "--prefix", prefix, "--devices", str(devices), *extra]
    if os_version:
        argv += ["--os", os_version]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        labctl_down(prefix)
        raise RuntimeError(f"labctl up --prefix {prefix} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


# --- ansible-playbook ---------------------------------------------------------------------------

@dataclass
class TaskResult:
    event: str  # ok / failed / skipped / unreachable
    host: str
    task: str
    action: str
    changed: bool
    result: dict[str, t.Any]
    ignored: bool = False

    @property
    def failed(self) -> bool:
        return self.event in ("failed", "unreachable")


@dataclass
class PlaybookRun:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    events: list[dict[str, t.Any]]
    duration: float
    triggered_at: float | None = None  # when the trigger's action had run (time.time() after on_trigger)

    @property
    def results(self) -> list[TaskResult]:
        return [
            TaskResult(e["event"], e["host"], e["task"], e["action"], e["changed"], e["result"], bool(e.get("ignore_errors")))
            for e in self.events
            if e["event"] in ("ok", "failed", "skipped", "unreachable")
        ]

    def host_results(self, host: str) -> list[TaskResult]:
        return [r for r in self.results if r.host == host]

    def step(self, host: str, action: str, index: int = -1) -> TaskResult:
        """The result of ``action`` (e.g. ``osfleet.hup.fetch``) that ran on ``host`` (last one by default)."""
        found = [r for r in self.host_results(host) if r.action == action and r.event != "skipped"]
        if not found:
            raise AssertionError(f"{host}: no result of {action} in the run; tasks: {[r.task for r in self.host_results(host)]}")
        return found[index]

    def changed(self, host: str | None = None) -> list[TaskResult]:
        return [r for r in self.results if r.changed and (host is None or r.host == host)]

    def failures(self, host: str | None = None) -> list[TaskResult]:
        """Failed results that counted (not those of tasks with ignore_errors)."""
        return [r for r in self.results if r.failed and not r.ignored and (host is None or r.host == host)]

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        for e in self.events:
            if e["event"] == "stats":
                return t.cast(dict[str, dict[str, int]], e["hosts"])
        return {}

    def started(self, host: str, action: str) -> float | None:
        """When ``action`` first started on ``host`` (time.time()), or None."""
        for e in self.events:
            if e["event"] == "start" and e["host"] == host and e["action"] == action:
                return float(e["time"])
        return None

    def summary(self) -> str:
        return f"rc={self.rc}\n--- stdout (tail)\n{self.stdout[-4000:]}\n--- stderr (tail)\n{self.stderr[-2000:]}"


def _read_events(path: Path) -> list[dict[str, t.Any]]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.endswith("}"):
            events.append(json.loads(line))
    return events


class _EventTail:
    """The events of a running playbook so far, reading only what the file gained since the last
    call (the trigger polls every 50 ms; parsing the whole file each time cost CPU the runs need)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, t.Any]] = []
        self._offset = 0

    def __call__(self) -> list[dict[str, t.Any]]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                chunk = stream.read()
        except FileNotFoundError:
            return self.events
        # only whole lines: the callback may be in the middle of writing the last one
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].decode("utf-8").splitlines():
            if line.endswith("}"):
                self.events.append(json.loads(line))
        self._offset += end
        return self.events


def ansible_playbook(
    lab: Lab,
    *args: str,
    workdir: Path,
    playbook: str = "osfleet.hup.update",
    extra_vars: dict[str, t.Any] | None = None,
    limit: str | None = None,
    trigger: Callable[[list[dict[str, t.Any]]], bool] | None = None,
    on_trigger: Callable[[subprocess.Popen[str]], None] | None = None,
    timeout: float = 900,
    callbacks: t.Sequence[str] = (),
    env: t.Mapping[str, str] | None = None,
) -> PlaybookRun:
    """Run ansible-playbook against ``lab``; ``workdir`` receives the events file and the logs.

    ``callbacks`` are enabled besides the test callback (e.g. ``osfleet.hup.report``); ``env`` is
    added to the environment of ansible-playbook.

    When ``trigger`` is given it is called with the events so far every 50 ms; the first time it
    returns True, ``on_trigger(process)`` runs (default: SIGKILL of the whole process group, i.e.
    ansible-playbook, its workers and their ssh clients).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("run-*.events.jsonl"))) + 1
    events_file = workdir / f"run-{n}.events.jsonl"
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(lab.inventory), playbook]
    if limit:
        argv += ["--limit", limit]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    argv += list(args)
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": collections_path(),
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": ",".join(["osfleet_events", *callbacks]),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"),
        "OSFLEET_EVENTS_FILE": str(events_file),
        # the controller's state (the report callback's default reports/, a rollout's or a
        # rehearsal's default directory) in the lab's own directory, gone with the lab; never the
        # home of whoever runs the tests
        "XDG_STATE_HOME": str(lab.inventory.parent / "controller-state"),
        **(env or {}),
    }
    out_path, err_path = workdir / f"run-{n}.stdout", workdir / f"run-{n}.stderr"
    start = time.time()
    triggered_at: float | None = None
    events_so_far = _EventTail(events_file)
    with open(out_path, "w", encoding="utf-8") as out, open(err_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=workdir, text=True, start_new_session=True)
        try:
            while proc.poll() is None:
                if trigger is not None and triggered_at is None and trigger(events_so_far()):
                    (on_trigger or kill_controller)(proc)
                    triggered_at = time.time()
                if time.time() - start > timeout:
                    kill_controller(proc)
                    proc.wait()
                    raise TimeoutError(f"ansible-playbook did not end within {timeout}s: {shlex.join(argv)}")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                kill_controller(proc)
                proc.wait()
    return PlaybookRun(
        argv=argv,
        rc=proc.returncode,
        stdout=out_path.read_text(encoding="utf-8"),
        stderr=err_path.read_text(encoding="utf-8"),
        events=_read_events(events_file),
        duration=time.time() - start,
        triggered_at=triggered_at,
    )


def kill_process_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ansible-playbook and everything in its process group (started by us). Its workers
    are not in it (ansible-core's WorkerProcess calls setsid): the task that runs goes on; use
    ``kill_controller`` for a controller that is gone as a whole."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _stop_controller(proc: subprocess.Popen[str]) -> list[int]:
    """SIGSTOP ansible-playbook, its workers (each in a session of its own) and their ssh
    processes, each as it is found (it can fork no more), walking down from ansible-playbook until
    no new one turns up; returns their pids."""
    found: list[int] = []
    todo = [proc.pid]
    for _round in range(10):  # bounded: the stopped processes fork no new ones
        if not todo:
            break
        new: list[int] = []
        for pid in todo:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                continue
            found.append(pid)
        tree = _children()
        for pid in found:
            new += [c for c in tree.get(pid, []) if c not in found and c not in new]
        todo = new
    return found


def kill_controller(proc: subprocess.Popen[str]) -> None:
    """The controller gone as a whole, as when its machine dies: ansible-playbook, its workers
    and their ssh processes are stopped (``_stop_controller``), then all are killed; then the
    process group, for what ansible-playbook's group still holds."""
    for pid in _stop_controller(proc):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    kill_process_group(proc)


@contextlib.contextmanager
def controller_stopped(proc: subprocess.Popen[str]) -> Iterator[None]:
    """The controller stopped as a whole (``_stop_controller``) while the block runs, then continued
    (SIGCONT): a fault the block makes on a device lands where the run was when it stopped, not
    wherever the run got to while the fault's own command (labctl: a Python start-up, seconds on a
    loaded machine) was under way. The device runs on meanwhile; it gets no new command."""
    stopped = _stop_controller(proc)
    try:
        yield
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def selected_scenarios(session: t.Any, module: str, scenario_of_test: t.Mapping[str, str]) -> set[str]:
    """The scenarios of the tests of ``module`` that the pytest session runs (e.g. after ``-k``):
    ``scenario_of_test`` maps a test's name to its scenario (``{step}``: the test's parameter)."""
    wanted = set()
    for item in session.items:
        if getattr(item, "module", None) is not None and item.module.__name__ == module and hasattr(item, "originalname"):
            params = item.callspec.params if hasattr(item, "callspec") else {}
            wanted.add(scenario_of_test[item.originalname].format(step=params.get("step", "")))
    return wanted


def step_started(host: str, step: str) -> Callable[[list[dict[str, t.Any]]], bool]:
    """Trigger: the standard role's task for ``step`` (a key of STEP_TASKS) started on ``host``.

    Matched by task name, not by module: a module can run in several tasks (the supervisor
    three times, the lock also in a task that is usually skipped, and a skipped task starts too).
    """
    name = STEP_TASKS[step]

    def trigger(events: list[dict[str, t.Any]]) -> bool:
        return any(e["event"] == "start" and e["host"] == host and name in e["task"] for e in events)

    return trigger
