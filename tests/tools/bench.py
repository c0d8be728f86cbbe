# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`make bench`: what a fleet operator pays in time, bytes and controller load, as ratios against
baselines measured in the same run (README "Benchmarks"; issue 13).

    tests/tools/bench.py [--quick] [--only step_overhead,bytes,...] [--forks N] [--out FILE]

Sections (each a key of the JSON document; the pure computations are in bench_stats.py):

- ``step_overhead``: one standard update (``osfleet.hup.update``, 2.88.4 -> 2.113.0) of a lab device
  against the same device-side work done by one shell script in one SSH session on a twin device
  (tests/tools/bench_reference/), interleaved (the order alternates pair by pair), per profile (ab,
  balenaos); SSH commands per update counted by an ``ssh`` wrapper (ANSIBLE_SSH_EXECUTABLE).
- ``bytes``: per delta of the lab's catalog, the bytes the lab's registries sent (their own
  ``http.response.written`` counters) for the delta and for the full image, pulled on a lab device
  the way the fetch step pulls them, and the floor: the gzip'd tar of just the files that differ.
- ``fleet``: a canary rollout (``osfleet.hup.rollout``) of growing fleets: wall time, controller CPU
  seconds and peak memory of the ansible-playbook process tree (wait4 rusage; the tree's RSS sampled
  from /proc), per device and in total, with the forks used, and a fitted line of each over the sizes.
- ``noop_rerun``: the update re-run on devices already on the target against
  ``ansible -m raw -a true`` on the same devices, interleaved.
- ``check_plan``: ``--check`` of a rollout against the real rollout's own planning play.

Every lab is taken down again (try/finally), also when a step fails; every wait is bounded. The
playbooks' output goes to build/bench/logs/, labctl's to stderr; stdout holds only the JSON document
(also written to build/bench/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_stats as stats

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tests" / "tools"
LABCTL = REPO_ROOT / "tests" / "lab" / "labctl"
BENCH_DIR = REPO_ROOT / "build" / "bench"
LOG_DIR = BENCH_DIR / "logs"
REFERENCE_DIR = TOOLS / "bench_reference"
CALLBACK_DIR = TOOLS / "bench_plugins" / "callback"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "lab"))

DEVICE_TYPE = "genericx86-64-ext"
FROM_VERSION = "2.88.4"
TARGET = "2.113.0"
SECOND_TARGET = "2.114.1"
AIMS = {"step_overhead": 1.25, "noop_rerun": 2.5, "delta_over_floor": 1.3, "delta_over_full": 0.15}
PLAN_PLAY = "Plan the rollout"
PLAYBOOK_TIMEOUT = 900.0
SSH_TIMEOUT = 300.0
REBOOT_WAIT = 180.0
LAB_TIMEOUT = 600.0
#: how often measured() samples the memory of a run's process tree, seconds
SAMPLE_INTERVAL = 0.2
#: a suffix of the lab prefixes (bnstep, bnfleet), so that runs of several people on one machine keep apart
LAB_SUFFIX = os.environ.get("OSFLEET_LAB_SUFFIX", "")


@dataclass(frozen=True)
class Mode:
    """How much a run measures: --quick is one release pair, the smallest fleets, 3 pairs per ratio."""

    name: str
    step_pairs: int
    byte_pairs: int  # how many of the catalog's deltas (0: all)
    noop_pairs: int
    fleet_sizes: tuple[int, ...]
    noop_devices: int
    check_devices: int
    wall_aim_s: float  # the run's own wall time aim (README "Benchmarks")


FULL = Mode("full", step_pairs=3, byte_pairs=0, noop_pairs=5, fleet_sizes=(5, 10, 20, 50), noop_devices=10, check_devices=20,
            wall_aim_s=900)
# --quick: one release pair, the smallest fleets, and 3 interleaved pairs per ratio (the fewest a
# median still means something with)
QUICK = Mode("quick", step_pairs=3, byte_pairs=1, noop_pairs=3, fleet_sizes=(1, 2), noop_devices=2, check_devices=2,
             wall_aim_s=180)
SECTIONS = ("step_overhead", "bytes", "fleet", "noop_rerun", "check_plan")
# step_overhead's steps, the update's tasks (substrings of their names) beside the reference's phases
# (tests/tools/bench_reference/update_<profile>.sh; no phase: the reference has no such step)
_REBOOT_COMMIT = [("reboot and wait for the new boot", ("Reboot into the new OS",), ("reboot_wait",)),
                  ("verify and commit", ("Verify the new OS and commit it",), ("commit",)),
                  ("lock take+release", ("Take the update lock", "Release the update lock"), ()),
                  ("preflight", ("Preflight",), ()),
                  ("supervisor stop+update+start", ("the supervisor",), ()),
                  ("ansible start-up+wrap-up", (stats.STARTUP, stats.WRAPUP), ())]
STEPS = {
    "ab": [("fetch", ("Fetch the target image",), ("start->fetched",)),
           ("write the spare root", ("Write the inactive root partition",), ("fetched->written",)),
           ("boot files", ("Copy the new boot files",), ("written->bootfiles",)),
           ("arm the bootloader", ("Arm the bootloader",), ("bootfiles->armed",)), *_REBOOT_COMMIT],
    "balenaos": [("fetch+write+boot files+arm (hostapp-update)", ("Fetch the target image", "Write the inactive root partition",
                                                                  "Copy the new boot files", "Arm the bootloader"), ("start->written",)),
                 *_REBOOT_COMMIT],
}


class BenchError(Exception):
    """A benchmark step failed."""


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# ==== processes ================================================================================

@dataclass
class Run:
    """One measured command: wall seconds, controller CPU seconds and memory of its process tree."""

    wall: float
    cpu: float
    maxrss_kib: int
    tree_peak_kib: int
    rc: int
    log: Path
    started: float = 0.0
    ended: float = 0.0
    timing: dict[str, Any] = field(default_factory=dict)
    ssh_commands: int | None = None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants, KiB (bounded walk)."""
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    total, todo, seen = 0, [pid], set()
    while todo and len(seen) < 5000:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        try:
            total += int(Path(f"/proc/{cur}/statm").read_text().split()[1]) * page_kib
        except (OSError, ValueError, IndexError):
            continue
        todo += _children(cur)
    return total


def measured(argv: Sequence[str], log_name: str, env: dict[str, str] | None = None,
             timeout: float = PLAYBOOK_TIMEOUT, stdin_text: str | None = None) -> Run:
    """Run argv in a session of its own, output in build/bench/logs/<log_name>.log; its wall time,
    CPU seconds (user + system of it and every descendant it reaped: wait4) and memory (ru_maxrss:
    the largest process; the tree's summed RSS sampled every SAMPLE_INTERVAL s; the wall time read when
    the process ends, not at the next sample). Killed (its process group)
    after ``timeout`` seconds."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{log_name}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    if stdin_text is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin_text.encode())
        except BrokenPipeError:
            pass
        proc.stdin.close()
    peak = 0
    timed_out = False
    # between the samples of its memory, a wait that ends when the process does (a pidfd is readable
    # then): the wall time is read at its end, not at the next sample
    ended = os.pidfd_open(proc.pid)
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss_kib(proc.pid))
            if time.monotonic() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            select.select([ended], [], [], SAMPLE_INTERVAL)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): end the run we started, then the labs go down
        os.killpg(proc.pid, signal.SIGKILL)
        os.wait4(proc.pid, 0)
        proc.returncode = -9
        raise
    finally:
        os.close(ended)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if timed_out:
        raise BenchError(f"{log_name}: {argv[0]} did not end within {timeout:.0f}s (killed; log {log})")
    return Run(wall=round(wall, 3), cpu=round(usage.ru_utime + usage.ru_stime, 3), maxrss_kib=usage.ru_maxrss,
               tree_peak_kib=max(peak, usage.ru_maxrss), rc=proc.returncode, log=log, started=start, ended=start + wall)


def labctl(*args: str, timeout: float = LAB_TIMEOUT) -> str:
    """Run labctl (its stderr on ours); its stdout."""
    try:
        done = subprocess.run([str(LABCTL), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sys.stderr,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"labctl {' '.join(args)} did not end within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"labctl {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout


# ==== labs =====================================================================================

class BenchLab:
    """A lab prefix of the bench; ``with BenchLab(...) as lab`` always takes it down again."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dir = REPO_ROOT / "build" / "lab" / prefix
        self.inventory = self.dir / "inventory.yml"

    def __enter__(self) -> BenchLab:
        if (self.dir / "state.json").exists():
            labctl("down", "--prefix", self.prefix)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            labctl("down", "--prefix", self.prefix)
        except BenchError as error:
            say(f"taking down {self.prefix}: {error}")

    def up(self, devices: int, profile: str, version: str = FROM_VERSION) -> float:
        start = time.monotonic()
        labctl("up", "--devices", str(devices), "--prefix", self.prefix, "--profile", profile, "--os", version)
        return round(time.monotonic() - start, 1)

    def status(self) -> list[dict[str, Any]]:
        return json.loads(labctl("status", "--prefix", self.prefix, "--json", timeout=120))

    def catalog(self) -> dict[str, Any]:
        return json.loads((self.dir / "catalog.json").read_text())

    def registry_logs(self) -> list[Path]:
        return sorted(self.dir.glob("registry-*/registry.log"))

    def ssh_argv(self, name: str) -> list[str]:
        from osfleet_lab.lab import Lab  # pylint: disable=import-outside-toplevel
        lab = Lab(self.prefix)
        return lab.ssh_argv(lab.state.device(name), timeout=10)

    def devices(self) -> list[str]:
        return sorted(row["device"] for row in self.status())

    def write_inventory(self, name: str, hosts: Sequence[str], extra_vars: dict[str, Any] | None = None) -> Path:
        """An inventory of some of the lab's devices (host vars copied from the lab's own)."""
        import yaml  # pylint: disable=import-outside-toplevel
        doc = yaml.safe_load(self.inventory.read_text())
        group = doc["all"]["children"][f"lab_{self.prefix}"]
        keep = set(hosts)
        for child in group.get("children", {}).values():
            child["hosts"] = {h: v for h, v in (child.get("hosts") or {}).items() if h in keep}
        group.setdefault("vars", {}).update(extra_vars or {})
        path = BENCH_DIR / f"{self.prefix}-{name}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


class RegistryCounter:
    """The bytes the lab's registries sent between ``start()`` and ``stop()`` (their logs' counters)."""

    def __init__(self, lab: BenchLab) -> None:
        self.lab = lab
        self.offsets: dict[Path, int] = {}

    def start(self) -> None:
        self.offsets = {log: log.stat().st_size for log in self.lab.registry_logs()}

    def stop(self) -> dict[str, Any]:
        lines: list[str] = []
        for log in self.lab.registry_logs():
            with open(log, "rb") as handle:
                handle.seek(self.offsets.get(log, 0))
                lines += handle.read().decode(errors="replace").splitlines()
        return stats.registry_bytes(lines)


@contextmanager
def counted(lab: BenchLab) -> Iterator[dict[str, Any]]:
    counter = RegistryCounter(lab)
    counter.start()
    out: dict[str, Any] = {}
    try:
        yield out
    finally:
        time.sleep(0.3)  # the registry writes its line once the response completed
        out.update(counter.stop())


# ==== ansible ==================================================================================

def ssh_counter() -> Path:
    """An ssh that counts its invocations (one line each in $OSFLEET_BENCH_SSH_LOG: "ssh" and the
    wall-clock time it started, for bench_stats.task_ssh) and runs ssh."""
    path = BENCH_DIR / "ssh-count"
    real = shutil.which("ssh") or "/usr/bin/ssh"
    path.write_text(f'#!/bin/sh\necho "ssh $(date +%s.%N)" >> "$OSFLEET_BENCH_SSH_LOG"\nexec {shlex.quote(real)} "$@"\n')
    path.chmod(0o755)
    return path


def ansible_env(name: str, forks: int) -> tuple[dict[str, str], Path, Path]:
    """The environment of a measured ansible run: the timing callback, the ssh counter."""
    timing = LOG_DIR / f"{name}.timing.json"
    ssh_log = LOG_DIR / f"{name}.ssh"
    for path in (timing, ssh_log):
        if path.exists():
            path.unlink()
    env = {
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": "bench_timing",
        "OSFLEET_BENCH_TIMING": str(timing),
        "ANSIBLE_SSH_EXECUTABLE": str(ssh_counter()),
        "OSFLEET_BENCH_SSH_LOG": str(ssh_log),
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_NOCOLOR": "1",
    }
    return env, timing, ssh_log


def ansible_run(kind: str, inventory: Path, name: str, forks: int, args: Sequence[str], check_rc: bool = True) -> Run:
    """ansible-playbook (kind "playbook") or ansible (kind "adhoc"), measured, with its timings."""
    env, timing, ssh_log = ansible_env(name, forks)
    exe = "ansible-playbook" if kind == "playbook" else "ansible"
    run = measured([str(VENV_BIN / exe), "-i", str(inventory), *args], name, env)
    if check_rc and run.rc != 0:
        raise BenchError(f"{name}: {exe} failed with exit code {run.rc} (log {run.log})")
    ssh_text = ssh_log.read_text() if ssh_log.exists() else ""
    if timing.exists():
        run.timing = json.loads(timing.read_text())
        run.timing["ssh"] = stats.ssh_times(ssh_text.splitlines(), float(run.timing.get("wall_minus_monotonic", 0.0)))
    run.ssh_commands = stats.count_lines(ssh_text)
    return run


def update(inventory: Path, name: str, forks: int, target: str, limit: str | None = None) -> Run:
    args = ["osfleet.hup.update", "-e", json.dumps({"hup_target_version": target})]
    return ansible_run("playbook", inventory, name, forks, [*args, *(["--limit", limit] if limit else [])])


def require_on(lab: BenchLab, names: Sequence[str], version: str) -> None:
    """Fail unless every device named runs ``version`` (a real outcome, not the playbook's word)."""
    rows = {row["device"]: row for row in lab.status()}
    wrong = [f"{n}: {rows.get(n, {}).get('os_version')}" for n in names if rows.get(n, {}).get("os_version") != version]
    if wrong:
        raise BenchError(f"not on {version} after the run: {', '.join(wrong)}")


# ==== step_overhead ============================================================================

def reference_script(profile: str) -> str:
    """The baseline updater as sent: the collection's shell library (what it names) and the script."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils import shell  # pylint: disable=import-outside-toplevel
    body = (REFERENCE_DIR / f"update_{profile}.sh").read_text()
    return shell.library().text_for(body) + body


def commit_script() -> str:
    from ansible_collections.osfleet.hup.plugins.plugin_utils import shell  # pylint: disable=import-outside-toplevel
    body = (REFERENCE_DIR / "update_commit.sh").read_text()
    return shell.library().text_for(body) + body


def delta_source(catalog: dict[str, Any], source: str, target: str) -> tuple[str, str, str]:
    """(ref, digest, tag) of the catalog's delta source -> target of the lab's device type."""
    for rel in catalog["releases"]:
        if rel["device_type"] == DEVICE_TYPE and rel["version"] == target:
            for delta in rel["deltas"]:
                if delta["from"] == source:
                    return (f"{catalog['registries']['primary']}/{delta['repository']}@{delta['digest']}",
                            delta["digest"], delta["tag"])
    raise BenchError(f"the lab's catalog has no delta {source} -> {target}")


def full_source(catalog: dict[str, Any], target: str) -> tuple[str, str, str]:
    for rel in catalog["releases"]:
        if rel["device_type"] == DEVICE_TYPE and rel["version"] == target:
            return f"{catalog['registries']['primary']}/{rel['repository']}@{rel['digest']}", rel["digest"], rel["tag"]
    raise BenchError(f"the lab's catalog has no {target}")


def ssh_once(lab: BenchLab, name: str, script: str, args: Sequence[str], timeout: float = SSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
    remote = "sh -s -- " + " ".join(shlex.quote(a) for a in args)
    try:
        return subprocess.run([*lab.ssh_argv(name), remote], input=script, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{name}: the reference script did not end within {timeout:.0f}s") from exc


def reference_update(lab: BenchLab, name: str, profile: str, catalog: dict[str, Any], target: str) -> dict[str, Any]:
    """The baseline: one SSH session does fetch .. reboot, then the new boot is waited for (an SSH
    poll every 0.5 s) and one more session commits. Its wall time and phases, and its SSH commands."""
    ref, digest, tag = delta_source(catalog, FROM_VERSION, target)
    args = [ref, digest, tag, "delta"] if profile == "ab" else [ref]
    start = time.monotonic()
    done = ssh_once(lab, name, reference_script(profile), args)
    session_end = time.monotonic()
    lines = done.stdout.splitlines()
    boot_id = next((line.split()[1] for line in lines if line.startswith("boot_id ")), "")
    if done.returncode not in (0, 255) or not boot_id or not any(line.startswith("phase armed") or line.startswith("phase written") for line in lines):
        raise BenchError(f"{name}: the reference script failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    phases = [(parts[1], float(parts[2])) for parts in (line.split() for line in lines) if parts[0] == "phase"]
    polls = 0
    deadline = time.monotonic() + REBOOT_WAIT
    while True:
        polls += 1
        try:
            probe = subprocess.run([*lab.ssh_argv(name), "cat /proc/sys/kernel/random/boot_id"], capture_output=True,
                                   text=True, timeout=15, stdin=subprocess.DEVNULL, check=False)
            new = probe.stdout.strip() if probe.returncode == 0 else ""
        except subprocess.TimeoutExpired:
            new = ""
        if new and new != boot_id:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: no new boot within {REBOOT_WAIT:.0f}s of the reference's reboot")
        time.sleep(0.5)
    booted = time.monotonic()
    commit = ssh_once(lab, name, commit_script(), [], timeout=60)
    end = time.monotonic()
    facts = dict(line.split(" ", 1) for line in commit.stdout.splitlines() if " " in line)
    if commit.returncode != 0 or facts.get("version") != target:
        raise BenchError(f"{name}: the reference did not update the device: {commit.stdout.strip()} {commit.stderr.strip()[-200:]}")
    steps = {}
    for (first, t0), (second, t1) in zip(phases, phases[1:]):
        steps[f"{first}->{second}"] = round(t1 - t0, 2)
    steps.update(session=round(session_end - start, 2), reboot_wait=round(booted - session_end, 2),
                 commit=round(end - booted, 2))
    return {"wall": round(end - start, 3), "phases": steps, "ssh_commands": 2 + polls}


def bench_step_overhead(mode: Mode, forks: int, lab: BenchLab, extra: dict[str, Any]) -> dict[str, Any]:
    """step_overhead, per profile; the bytes the collection's update pulled go to ``extra``."""
    out: dict[str, Any] = {"release_pair": f"{FROM_VERSION} -> {TARGET}", "aim": f"<= {AIMS['step_overhead']:g}",
                           "baseline": "tests/tools/bench_reference/update_<profile>.sh in one SSH session on a twin device, "
                                       "then an SSH poll every 0.5 s for the new boot and one SSH session to commit",
                           "ssh_commands_counted_as": "ssh client processes started for the device: for the update, "
                                                      "the invocations of an ssh wrapper set as ANSIBLE_SSH_EXECUTABLE "
                                                      "(each is one command on the device, over Ansible's ControlMaster "
                                                      "connection when there is one); for the baseline, its own ssh calls",
                           "profiles": {}}
    catalog = lab.catalog()
    rows = lab.status()
    for profile in ("ab", "balenaos"):
        names = sorted(r["device"] for r in rows if r["profile"] == profile)
        pairs, breakdowns, ref_phases, ssh_counts, ref_ssh, update_bytes, ref_bytes, cpu = [], [], [], [], [], [], [], []
        step_ssh, waits, without_wait = [], [], []
        for i in range(mode.step_pairs):
            coll, twin = names[2 * i], names[2 * i + 1]
            order = ("update", "reference") if i % 2 == 0 else ("reference", "update")
            result: dict[str, Any] = {}
            for what in order:
                say(f"step_overhead {profile} pair {i + 1}/{mode.step_pairs}: {what}")
                with counted(lab) as wire:
                    if what == "update":
                        run = update(lab.inventory, f"step-{profile}-{i}", forks, TARGET, limit=coll)
                        result["update"] = run
                    else:
                        result["reference"] = reference_update(lab, twin, profile, catalog, TARGET)
                (update_bytes if what == "update" else ref_bytes).append(wire["bytes"])
            require_on(lab, [coll], TARGET)
            run, ref = result["update"], result["reference"]
            pairs.append((run.wall, ref["wall"]))
            breakdowns.append(stats.with_phases(stats.task_breakdown(run.timing, coll),
                                                stats.run_phases(run.timing, run.started, run.ended)))
            ref_phases.append(ref["phases"])
            ssh_counts.append(run.ssh_commands)
            step_ssh.append(stats.task_ssh(run.timing, coll))
            waits.append(stats.device_wait(run.timing, coll))
            without_wait.append((run.wall - waits[-1], ref["wall"]))
            cpu.append(run.cpu)
            ref_ssh.append(ref["ssh_commands"])
        summary = stats.ratio_summary(pairs)
        breakdown = stats.median_breakdown(breakdowns)
        median_phases = {k: round(statistics.median(p[k] for p in ref_phases), 2) for k in ref_phases[0]}
        figure = round(statistics.median(p[0] for p in pairs), 3)
        base = round(statistics.median(p[1] for p in pairs), 3)
        comparison = stats.step_comparison(stats.median_breakdown(breakdowns, top=0), median_phases, STEPS[profile],
                                           stats.median_counts(step_ssh))
        ssh = (statistics.median(ssh_counts), statistics.median(ref_ssh))
        wait = round(statistics.median(waits), 2)
        without = stats.ratio_summary(without_wait)
        out["profiles"][profile] = {
            "figure": "wall seconds of ansible-playbook osfleet.hup.update --limit <device>",
            "ratio": summary, **stats.verdict(summary["median"], AIMS["step_overhead"]),
            "why": stats.step_overhead_why(summary["median"], AIMS["step_overhead"], figure, base, breakdown, median_phases,
                                           comparison, ssh, wait, without["median"]),
            # the device's own work the reference does not wait for: what the ratio is without it
            # (for reading the figure; the aim is judged on the ratio above)
            "device_rollback_health_wait_s": waits,
            "ratio_without_device_wait": without,
            "update_breakdown_s": breakdown,
            "steps_vs_reference_s": comparison,
            "reference_phases_s": median_phases,
            "ssh_commands_per_update": ssh_counts, "ssh_commands_per_reference": ref_ssh,
            "controller_cpu_s_per_update": cpu,
            "registry_bytes": {"update": update_bytes, "reference": ref_bytes},
        }
        extra[profile] = update_bytes
    return out


# ==== bytes ====================================================================================

def floor_bytes(source: str, target: str) -> int:
    """The compressed size of just the files that differ: the gzip'd tar (the lab's layer level) of
    the entries of ``target``'s root that are new or changed against ``source``'s, with an empty
    whiteout per removed entry; no parent directories."""
    import io  # pylint: disable=import-outside-toplevel
    import gzip  # pylint: disable=import-outside-toplevel
    from osfleet_lab import releases  # pylint: disable=import-outside-toplevel
    from osfleet_lab.util import CACHE_DIR  # pylint: disable=import-outside-toplevel
    old = releases.tree_from_dir(releases.release_rootfs(CACHE_DIR, DEVICE_TYPE, source))
    new = releases.tree_from_dir(releases.release_rootfs(CACHE_DIR, DEVICE_TYPE, target))
    changed = {p: n for p, n in new.items() if p not in old or not old[p].same_as(n)}
    changed = {p: n for p, n in changed.items() if n.kind != "dir" or p not in old}
    removed = [p for p in old if p not in new]
    sink = io.BytesIO()
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=releases.GZIP_LEVEL, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
            for path in sorted(changed):
                node = changed[path]
                info = releases._tarinfo(path, node)  # pylint: disable=protected-access
                if node.kind == "file":
                    with node.open() as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
            for path in removed:
                parent, _sep, base = path.rpartition("/")
                tar.addfile(tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}"))
    return len(sink.getvalue())


PULL_SCRIPT = """set -u
d=/mnt/data/osfleet-bench-pull
rm -rf "$d" && mkdir -p "$d" || exit 1
skopeo --insecure-policy copy --quiet --preserve-digests --src-tls-verify=false "docker://$1" "oci:$d/image:$2" </dev/null
rc=$?
rm -rf "$d"
exit "$rc"
"""


def pull_bytes(lab: BenchLab, device: str, ref: str, tag: str) -> dict[str, Any]:
    """The bytes the registries sent for one pull on a device (the fetch step's skopeo copy)."""
    with counted(lab) as wire:
        done = ssh_once(lab, device, PULL_SCRIPT, [ref, tag], timeout=180)
    if done.returncode != 0:
        raise BenchError(f"{device}: pulling {ref} failed: {done.stderr.strip()[-300:]}")
    return wire


def bench_bytes(mode: Mode, lab: BenchLab, update_bytes: dict[str, list[int]]) -> dict[str, Any]:
    catalog = lab.catalog()
    device = sorted(r["device"] for r in lab.status() if r["profile"] == "ab")[-1]
    pairs = []
    for rel in sorted((r for r in catalog["releases"] if r["device_type"] == DEVICE_TYPE), key=lambda r: [int(x) for x in r["version"].split(".")]):
        for delta in rel["deltas"]:
            if mode.byte_pairs and len(pairs) >= mode.byte_pairs:
                break
            source, target = delta["from"], rel["version"]
            say(f"bytes {source} -> {target}")
            ref, _digest, tag = delta_source(catalog, source, target)
            delta_wire = pull_bytes(lab, device, ref, tag)
            fref, _fdigest, ftag = full_source(catalog, target)
            full_wire = pull_bytes(lab, device, fref, ftag)
            floor = floor_bytes(source, target)
            pairs.append({"from": source, "to": target, "delta_bytes": delta_wire["bytes"], "full_bytes": full_wire["bytes"],
                          "floor_bytes": floor, "delta_catalog_size": delta["size"], "full_catalog_size": rel["size"],
                          "requests": {"delta": delta_wire["requests"], "full": full_wire["requests"]},
                          **stats.bytes_verdicts(delta_wire["bytes"], full_wire["bytes"], floor,
                                                 {"delta_over_floor": AIMS["delta_over_floor"], "delta_over_full": AIMS["delta_over_full"]})})
    return {"counted_as": "bytes the lab's registries sent (docker-registry's own http.response.written of each "
                          "'response completed' log line: response bodies, without HTTP headers and TCP) while a lab "
                          "device pulled the image with the fetch step's skopeo copy",
            "floor": "gzip'd tar (the lab's layer compression level) of just the entries of the target's root that are new "
                     "or changed, and an empty whiteout per removed entry",
            "pairs": pairs,
            "collection_update_bytes": {"release_pair": f"{FROM_VERSION} -> {TARGET}", **update_bytes}}


# ==== fleet, noop_rerun, check_plan ============================================================

def rollout_args(rollout_id: str, target: str, canary: str, forks: int) -> list[str]:
    rdir = BENCH_DIR / "rollouts" / rollout_id
    if rdir.exists():
        shutil.rmtree(rdir)
    waves = [{"name": "canary", "hosts": canary, "max_failures": 0},
             {"name": "rest", "percent": 100, "max_failures": "10%", "max_concurrent": forks}]
    return ["osfleet.hup.rollout", "-e", json.dumps({"hup_target_version": target, "hup_rollout_id": rollout_id,
                                                     "hup_rollout_dir": str(rdir), "hup_waves": waves})]


def fleet_row(size: int, run: Run, forks: int, target: str) -> dict[str, Any]:
    return {"devices": size, "target": target, "forks": forks, "wall_s": run.wall, "cpu_s": run.cpu,
            "peak_tree_rss_mib": round(run.tree_peak_kib / 1024, 1), "largest_process_rss_mib": round(run.maxrss_kib / 1024, 1),
            "per_device": {"wall_s": stats.per_device(run.wall, size), "cpu_s": stats.per_device(run.cpu, size),
                           "peak_tree_rss_mib": stats.per_device(run.tree_peak_kib / 1024, size, 2)},
            "plan_phase_s": stats.play_seconds(run.timing, PLAN_PLAY), "ssh_commands": run.ssh_commands,
            "ssh_commands_per_device": stats.per_device(run.ssh_commands, size, 1)}


def bench_fleet(mode: Mode, forks: int, lab: BenchLab, sections: set[str], parts: dict[str, float]) -> dict[str, Any]:
    """Rollouts of growing fleets; the re-run and the check ride on the same lab (see the module doc).
    The seconds of the rollouts, the check and the re-runs are added to ``parts``."""
    names = lab.devices()
    sizes = list(mode.fleet_sizes)
    rows, offset = [], 0
    noop: dict[str, Any] | None = None
    check: dict[str, Any] | None = None
    for index, size in enumerate(sizes):
        last = index == len(sizes) - 1
        group = names[:size] if last else names[offset:offset + size]
        target = SECOND_TARGET if last and index > 0 else TARGET
        offset += 0 if last else size
        inv = lab.write_inventory(f"fleet{size}", group)
        rollout_id = f"bench-{mode.name}-{size}"
        if "check_plan" in sections and size == mode.check_devices and check is None:
            say(f"check_plan: --check of the {size}-device rollout")
            checked = ansible_run("playbook", inv, f"check-{size}", forks, [*rollout_args(rollout_id, target, group[0], forks), "--check"])
            check = {"devices": size, "check": checked}
            parts["check_plan"] = parts.get("check_plan", 0.0) + checked.wall
        say(f"fleet: rollout of {size} devices to {target}")
        run = ansible_run("playbook", inv, f"fleet-{size}", forks, rollout_args(rollout_id, target, group[0], forks))
        parts["fleet rollouts"] = parts.get("fleet rollouts", 0.0) + run.wall
        require_on(lab, group, target)
        rows.append(fleet_row(size, run, forks, target))
        if check is not None and "real" not in check:
            check["real"] = run
        if "noop_rerun" in sections and size == mode.noop_devices and noop is None:
            started = time.monotonic()
            noop = bench_noop(mode, forks, inv, group, target)
            parts["noop_rerun"] = parts.get("noop_rerun", 0.0) + time.monotonic() - started
    devices = [r["devices"] for r in rows]
    growth = {key: stats.growth(devices, [r[key] for r in rows]) for key in ("wall_s", "cpu_s", "peak_tree_rss_mib")}
    out: dict[str, Any] = {
        "rollout": "osfleet.hup.rollout, waves canary (the first device, max_failures 0) and rest (percent 100, "
                   "max_failures 10%, max_concurrent = forks); every fleet but the last on devices of its own to "
                   f"{TARGET}, the last on the first devices of the lab to {SECOND_TARGET} (from {TARGET} where an earlier "
                   f"fleet updated them, else from {FROM_VERSION}), so no device is updated to the release it runs",
        "measured_as": "wall: ansible-playbook start to exit; cpu: user+system seconds of ansible-playbook and every "
                       "process it reaped (wait4 rusage: forks, ssh clients; not the detached ssh ControlMaster); "
                       "peak_tree_rss: the largest sum of the RSS of its process tree, sampled every 0.2 s; "
                       "largest_process_rss: wait4's ru_maxrss",
        "sizes": rows,
        "growth": growth,
    }
    if "fleet" not in sections:
        out = {"skipped": "only the runs check_plan/noop_rerun need", **out}
    return {"fleet": out, "noop_rerun": noop, "check_plan": check_section(check)}


def check_section(check: dict[str, Any] | None) -> dict[str, Any] | None:
    if check is None:
        return None
    checked, real = check["check"], check.get("real")
    plan = stats.play_seconds(real.timing, PLAN_PLAY) if real else None
    summary = stats.ratio_summary([(checked.wall, plan)] if plan else [])
    return {"devices": check["devices"],
            "figure": "wall seconds of ansible-playbook osfleet.hup.rollout --check (plans every wave, probes each device: "
                      "method, source, bytes)",
            "baseline": "the real rollout's own planning play ('Plan the rollout': the plan frozen, the lock taken), "
                        "from the same fleet's real run",
            "ratio": summary, **stats.verdict(None, None),
            "check_s": checked.wall, "check_cpu_s": checked.cpu, "check_plan_phase_s": stats.play_seconds(checked.timing, PLAN_PLAY),
            "check_per_device_s": stats.per_device(checked.wall, check["devices"]),
            "real_plan_phase_s": plan, "real_rollout_s": real.wall if real else None,
            "check_over_real_rollout": round(checked.wall / real.wall, 3) if real and real.wall else None,
            "ssh_commands": checked.ssh_commands}


def bench_noop(mode: Mode, forks: int, inv: Path, group: Sequence[str], target: str) -> dict[str, Any]:
    pairs, breakdowns, tasks_run, ssh = [], [], 0, []
    for i in range(mode.noop_pairs):
        order = ("update", "raw") if i % 2 == 0 else ("raw", "update")
        got: dict[str, Run] = {}
        for what in order:
            say(f"noop_rerun pair {i + 1}/{mode.noop_pairs}: {what}")
            if what == "update":
                got[what] = update(inv, f"noop-update-{i}", forks, target)
            else:
                got[what] = ansible_run("adhoc", inv, f"noop-raw-{i}", forks, ["all", "-m", "raw", "-a", "true"])
        pairs.append((got["update"].wall, got["raw"].wall))
        breakdowns.append(stats.with_phases(stats.task_breakdown(got["update"].timing),
                                            stats.run_phases(got["update"].timing, got["update"].started, got["update"].ended)))
        tasks_run = len([t for t in got["update"].timing.get("tasks", []) if t["status"] != "skipped"])
        ssh.append({"update": got["update"].ssh_commands, "raw": got["raw"].ssh_commands})
    summary = stats.ratio_summary(pairs)
    breakdown = stats.median_breakdown(breakdowns)
    return {"devices": len(group), "target": target, "forks": forks,
            "figure": "wall seconds of ansible-playbook osfleet.hup.update on devices already on the target",
            "baseline": "wall seconds of ansible -m raw -a true on the same devices",
            "ratio": summary, **stats.verdict(summary["median"], AIMS["noop_rerun"]),
            "why": stats.noop_why(summary["median"], AIMS["noop_rerun"], breakdown, tasks_run,
                                  (statistics.median(s["update"] for s in ssh), statistics.median(s["raw"] for s in ssh))),
            "update_breakdown_s": breakdown, "ssh_commands": ssh}


# ==== main =====================================================================================

def host_info(forks: int) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "forks": forks}


def run_sections(mode: Mode, forks: int, sections: set[str], report: dict[str, Any], parts: dict[str, float]) -> int:
    """Run the sections asked for into ``report``; the seconds of each part of the run into ``parts``."""
    status = 0
    if sections & {"step_overhead", "bytes"}:
        try:
            with BenchLab("bnstep" + LAB_SUFFIX) as lab:
                pairs = mode.step_pairs if "step_overhead" in sections else 0
                report["labs"]["bnstep_up_s"] = lab.up(max(2 * pairs, 1), "ab")
                if pairs:
                    report["labs"]["bnstep_up_s"] += lab.up(2 * pairs, "balenaos")
                parts["labs up"] = report["labs"]["bnstep_up_s"]
                update_bytes: dict[str, Any] = {}
                if "step_overhead" in sections:
                    started = time.monotonic()
                    report["step_overhead"] = bench_step_overhead(mode, forks, lab, update_bytes)
                    parts["step_overhead"] = time.monotonic() - started
                if "bytes" in sections:
                    started = time.monotonic()
                    report["bytes"] = bench_bytes(mode, lab, update_bytes)
                    parts["bytes"] = time.monotonic() - started
        except Exception as error:  # pylint: disable=broad-exception-caught  # recorded, the next section runs
            say(f"error: {error}")
            for key in ("step_overhead", "bytes"):
                if key in sections and key not in report:
                    report[key] = {"error": str(error)}
            status = 1
    if sections & {"fleet", "noop_rerun", "check_plan"}:
        try:
            with BenchLab("bnfleet" + LAB_SUFFIX) as lab:
                devices = max(*mode.fleet_sizes, sum(mode.fleet_sizes[:-1]))
                report["labs"]["bnfleet_up_s"] = lab.up(devices, "balenaos")
                parts["labs up"] = parts.get("labs up", 0.0) + report["labs"]["bnfleet_up_s"]
                got = bench_fleet(mode, forks, lab, sections, parts)
                for key in ("fleet", "noop_rerun", "check_plan"):
                    if key in sections:
                        report[key] = got[key]
        except Exception as error:  # pylint: disable=broad-exception-caught  # recorded, the next section runs
            say(f"error: {error}")
            for key in ("fleet", "noop_rerun", "check_plan"):
                if key in sections and key not in report:
                    report[key] = {"error": str(error)}
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true",
                        help="one release pair, fleets of 1 and 2, 3 interleaved pairs per ratio (aim: under 3 minutes)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: all: {','.join(SECTIONS)})")
    parser.add_argument("--forks", type=int, default=10, help="ansible forks (default 10)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results.json"))
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    if not os.access(LABCTL, os.X_OK):
        say(f"{LABCTL} is missing or not executable")
        return 1
    mode = QUICK if args.quick else FULL
    # SIGTERM unwinds like Ctrl-C: the run in progress is killed, every lab taken down
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report: dict[str, Any] = {"labs": {}}
    host = host_info(args.forks)
    parts: dict[str, float] = {}
    status = run_sections(mode, args.forks, sections, report, parts)
    host["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    seconds = time.monotonic() - start
    parts["labs down and the rest"] = max(0.0, seconds - sum(parts.values()))
    # the run's own time against its aim: only a run of every section says anything about it
    run = stats.run_time(seconds, mode.wall_aim_s, parts, (host["loadavg_1m_at_start"], host["loadavg_1m_at_end"]), host["cpus"])
    if sections != set(SECTIONS):
        run = {"wall_s": run["wall_s"], "parts_s": run["parts_s"], "aim": None, "meets": None,
               "note": f"only {', '.join(sorted(sections))}: the aim of {mode.wall_aim_s:g}s is for a run of every section"}
    ordered = {"run": run, **{key: report[key] for key in ("labs", *SECTIONS) if key in report}}
    doc = stats.document(mode.name, host, ordered, seconds)
    text = json.dumps(doc, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
