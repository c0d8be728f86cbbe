# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run's device-side watchdog (scripts/watchdog.sh, started and stopped by the lock step's
lock_step.sh, told by watchdog_ctl.sh, and the heartbeat in the preamble of _lib.sh), run for real
in private mount and PID namespaces whose /mnt, /run and /var/lock are tmpfs and whose systemctl is
a stand-in that logs (root and unshare needed; skipped otherwise). Every wait is bounded."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("jq") or not shutil.which("setsid"),
    reason="needs root, unshare, setsid and jq",
)

D = "/run/osfleet/watchdog"
LOCK = {"owner": "ops@controller", "run_id": "r1", "since": "2027-01-15T07:50:00Z", "target": "2.113.0", "uptime": 1.0, "boot_id": "b0"}

SETUP = r"""
set -e
for m in /mnt /run; do mount -t tmpfs -o size=4m osfleet-test "$m"; done
if [ -L /var/lock ]; then mkdir -p "$(readlink -f /var/lock)"; else mount -t tmpfs -o size=1m osfleet-test /var/lock; fi
mkdir -p /mnt/state/osfleet /mnt/boot /mnt/data
# a stand-in systemctl that logs; start leaves a service running (as the lab's does: it inherits fds)
printf '#!/bin/sh\necho "$*" >> /mnt/systemctl.log\n%s\nexit 0\n' \
  'case $1 in is-active) exit 3;; start) sleep 60 >/dev/null 2>&1 </dev/null & ;; esac' > /mnt/systemctl
chmod +x /mnt/systemctl
mount --bind /mnt/systemctl "$(readlink -f /usr/bin/systemctl)"
printf '%s' {lock} > /mnt/state/osfleet/hup.lock
printf 'resin_root_part=3\nupgrade_available=1\n' > /mnt/boot/resinOS_uEnv.txt
set +e
# wait (bounded: 0.1 s steps) until the command $2 succeeds; $1 tries
until_ok() {{ n=$1; shift; i=0; while ! eval "$*"; do i=$((i + 1)); [ "$i" -ge "$n" ] && return 1; sleep 0.1; done; }}
"""


def device_cmd(name: str, run_id: str | None = None, **params: object) -> str:
    """A device script's command line as DeviceSession sends it (run id in the environment), stdin piped in."""
    command, stdin = shell.load(name).command(**params)
    if run_id:
        command = f"OSFLEET_RUN_ID={shlex.quote(run_id)} {command}"
    return command if stdin is None else f"printf '%s' {shlex.quote(stdin)} | {command}"


def lock_step_cmd(watchdog: str, run_id: str, bound: int = 2, log: str = "/mnt/data/run.log") -> str:
    """The lock step's act (scripts/lock_step.sh) with the lock left as it is (op none), as the lock
    step sends it to start (``watchdog=start``) or stop (``stop``) the run's watchdog; prints what
    the watchdog did (its ``watchdog``: started, running, stopped or none); fails as the script does.
    Its output goes to a file, not a command substitution: the driver is the namespace's PID 1, and
    it reaps a stopped watchdog (reparented to it) only while it waits for a command, as init does."""
    texts = {"watchdog": shell.load("watchdog").text, "apply": shell.load("apply").text} if watchdog == "start" else {}
    command = device_cmd("lock_step", op="none", expect="", doc="{}", watchdog=watchdog, run=run_id, bound=bound, interval=1, log=log,
                         record="", input={"texts": texts, "patterns": []})
    return f"{{ {command} > /mnt/lock_step.out && jq -r .watchdog /mnt/lock_step.out; }}"


def start_cmd(run_id: str = "r1", bound: int = 2, log: str = "/mnt/data/run.log") -> str:
    return lock_step_cmd("start", run_id, bound, log)


def stop_cmd(run_id: str) -> str:
    return lock_step_cmd("stop", run_id)


def retake(run_id: str) -> str:
    """The lock handed to another run as scripts/lock.sh does it: under hup.lock.guard, which the
    watchdog's own refresh of the lock also takes (without it the refresh, read before and written
    after this change, could put the old run id back: a race of the test, not of the device)."""
    return (f"exec 6>>/mnt/state/osfleet/hup.lock.guard && flock -x 6 && "
            f"jq --arg r {shlex.quote(run_id)} '.run_id = $r' /mnt/state/osfleet/hup.lock > /mnt/l && "
            f"mv /mnt/l /mnt/state/osfleet/hup.lock; exec 6>&-")


def run_of_the_run(run_id: str, body: str) -> str:
    """A script of the run: the library preamble (the heartbeat) and then ``body``."""
    return f"OSFLEET_RUN_ID={shlex.quote(run_id)} sh -c {shlex.quote(shell.library().preamble + body)} osfleet"


def run_in_namespaces(tmp_path: Path, body: str, lock: dict | None = None) -> subprocess.CompletedProcess[str]:
    driver = tmp_path / "driver.sh"
    driver.write_text(SETUP.format(lock=shlex.quote(json.dumps(lock or LOCK))) + body)
    # --kill-child: whatever the test leaves running (a watchdog) dies with the driver
    return subprocess.run(["unshare", "-m", "-p", "-f", "--kill-child", "--mount-proc", "--propagation", "private", "sh", str(driver)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_watchdog_fires_when_the_controller_goes_away(tmp_path: Path) -> None:
    disarm = [["put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=2\nupgrade_available=0\n"]]
    body = f"""
{start_cmd()} || exit 10
echo "start: $(cat {D}/pid >/dev/null && echo ok)"
( flock -n 9 ) 9>/var/lock/resinhup.lock && echo "resinhup: free" || echo "resinhup: held"
{device_cmd("watchdog_ctl", run_id="r1", op="disarm", run="r1", ops=disarm)}
# a script of the run that runs longer than the bound keeps the watchdog quiet
{run_of_the_run("r1", "sleep 4")}
echo "after busy: $([ -e {D}/fired ] && echo fired || echo quiet)"
# and so do short scripts of the run, one after the other, over more than the bound (the heartbeat)
i=0; while [ $i -lt 6 ]; do {run_of_the_run("r1", "true")}; sleep 0.8; i=$((i + 1)); done
echo "after heartbeats: $([ -e {D}/fired ] && echo fired || echo quiet)"
until_ok 200 '[ -e {D}/fired ] && [ ! -e {D}/pid ]' && echo "fired: $(cat {D}/fired)"
( flock -n 9 ) 9>/var/lock/resinhup.lock && echo "resinhup after: free" || echo "resinhup after: held"
echo "lock: $(jq -c .interrupted /mnt/state/osfleet/hup.lock)"
echo "systemctl: $(tr '\\n' ';' < /mnt/systemctl.log)"
echo "env: $(tr '\\n' ' ' < /mnt/boot/resinOS_uEnv.txt)"
echo "log: $(cat /mnt/data/run.log)"
{run_of_the_run("r1", "echo ran")} 2>&1; echo "script after fire: $?"
{run_of_the_run("r2", "echo ran")} 2>&1
"""
    proc = run_in_namespaces(tmp_path, body)
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr)
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert lines["start"] == "ok" and lines["resinhup"] == "held", out
    assert lines["after busy"] == "quiet" and lines["after heartbeats"] == "quiet", out
    assert lines["fired"].startswith("no word from the controller for "), out
    assert "put the env and boot files back for the running OS; the supervisor runs; the lock records the run as interrupted" in lines["fired"]
    assert lines["resinhup after"] == "free", out
    interrupted = json.loads(lines["lock"])
    assert interrupted["reason"].startswith("no word from the controller") and interrupted["boot_id"] and interrupted["uptime"] > 0
    assert "start balena-supervisor" in lines["systemctl"], out
    assert lines["env"] == "resin_root_part=2 upgrade_available=0 ", out
    assert json.loads(lines["log"])["step"] == "watchdog" and json.loads(lines["log"])["failed"] is True
    assert "the device's watchdog gave this run up (no word from the controller" in out and "hup_run_id=r1" in out
    assert "script after fire: 75" in out, "exit code WATCHDOG_GAVE_UP_EXIT (plugin_utils/action.py)"
    assert out.rstrip().endswith("ran"), "a script of another run is not stopped"


def test_watchdog_refreshes_the_lock_and_stops_with_the_release(tmp_path: Path) -> None:
    # The controller is there until the release, as in a run: a script of the run every 0.2 s (the
    # heartbeat), else a loaded machine that takes more than the bound (2 s) from the start to the
    # release makes the watchdog fire first, which is right for a silent controller but not this test.
    # The refresh comes after bound / 2 s; the wait for it ends as soon as it is there.
    body = f"""
{start_cmd(bound=2)} || exit 10
{start_cmd(bound=2)}
pid=$(cat {D}/pid)
( while [ ! -e /mnt/released ]; do {run_of_the_run("r1", "true")}; sleep 0.2; done ) &
hb=$!
until_ok 300 '[ "$(jq .boot_id /mnt/state/osfleet/hup.lock)" != "\\"b0\\"" ]' && \\
  echo "refreshed: $(jq -c '[.boot_id == "b0", .uptime > 1]' /mnt/state/osfleet/hup.lock)"
{stop_cmd("r2")}
{stop_cmd("r1")}
( flock -n 9 ) 9>/var/lock/resinhup.lock && echo "resinhup: free" || echo "resinhup: held"
: > /mnt/released; wait "$hb"
# stopped: the process is gone (so it fires at no later time) and it did not fire before
kill -0 "$pid" 2>/dev/null && echo "watchdog: alive" || echo "watchdog: gone"
echo "fired: $([ -e {D}/fired ] && echo yes || echo no) systemctl: $(cat /mnt/systemctl.log 2>/dev/null)"
"""
    proc = run_in_namespaces(tmp_path, body)
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert out[:2] == ["started", "running"], out
    assert "refreshed: [false,true]" in out
    assert out[3:8] == ["none", "stopped", "resinhup: free", "watchdog: gone", "fired: no systemctl: "], out


@pytest.mark.parametrize("ender", ["the release", "a new run"])
def test_resinhup_lock_is_free_once_the_watchdog_is_stopped(tmp_path: Path, ender: str) -> None:
    """A command the watchdog runs inherits its hold of /var/lock/resinhup.lock (a sync of the
    lock's refresh: seconds on a busy disk); killed meanwhile, the watchdog is gone but the command
    holds the lock on. The release's stop waits for it, and so does a new run's start (whose watchdog
    takes the lock): the stand-in sync here blocks until 2 s after the watchdog's process is gone."""
    # a new run: the lock handed to r2 first (not under hup.lock.guard, which the blocked refresh holds;
    # killed in its sync, the refresh writes nothing after)
    end = stop_cmd("r1") if ender == "the release" else (
        "jq '.run_id = \"r2\"' /mnt/state/osfleet/hup.lock > /mnt/l && mv /mnt/l /mnt/state/osfleet/hup.lock && "
        + start_cmd(run_id="r2", bound=30))
    body = f"""
printf '#!/bin/sh\\n: > /mnt/syncing\\ni=0; while [ ! -e /mnt/sync-go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done\\n' > /mnt/sync
chmod +x /mnt/sync && mount --bind /mnt/sync "$(readlink -f "$(command -v sync)")"
{start_cmd(bound=2)} || exit 10
pid=$(cat {D}/pid)
( while [ ! -e /mnt/released ]; do {run_of_the_run("r1", "true")}; sleep 0.2; done ) &
until_ok 300 '[ -e /mnt/syncing ]' && echo "in the refresh's sync"
( until_ok 300 '! kill -0 "$pid" 2>/dev/null'; sleep 2; : > /mnt/sync-go ) &
{end}
: > /mnt/released
if [ -e {D}/pid ]; then echo "resinhup: $(cat {D}/run)'s"; else ( flock -n 9 ) 9>/var/lock/resinhup.lock && echo "resinhup: free" || echo "resinhup: held"; fi
: > /mnt/sync-go; wait
"""
    proc = run_in_namespaces(tmp_path, body)
    ended = "stopped" if ender == "the release" else "started"
    held = "resinhup: free" if ender == "the release" else "resinhup: r2's"
    assert proc.stdout.splitlines() == ["started", "in the refresh's sync", ended, held], (proc.stdout, proc.stderr)


def test_watchdog_ends_quietly_when_the_lock_is_not_its_run(tmp_path: Path) -> None:
    # bound 5: a loaded machine must not make the watchdog fire before the lock is handed on
    body = f"""
{start_cmd(bound=5)} || exit 10
{retake("r9")}
until_ok 100 '[ ! -e {D}/pid ]' && echo ended
sleep 3
echo "fired: $([ -e {D}/fired ] && echo yes || echo no) systemctl: $(cat /mnt/systemctl.log 2>/dev/null)"
"""
    proc = run_in_namespaces(tmp_path, body)
    assert proc.stdout.splitlines() == ["started", "ended", "fired: no systemctl: "], (proc.stdout, proc.stderr)


def test_watchdog_does_not_start_while_another_updater_holds_resinhup_lock(tmp_path: Path) -> None:
    body = f"""
exec 9>/var/lock/resinhup.lock; flock -x 9
{start_cmd()} 9>&-; echo "rc=$?"
"""
    proc = run_in_namespaces(tmp_path, body)
    assert "rc=1" in proc.stdout, (proc.stdout, proc.stderr)
    assert "the device-side watchdog did not start: /var/lock/resinhup.lock is held (another updater runs)" in proc.stderr


def test_a_new_run_stops_the_watchdog_of_the_run_it_took_the_lock_from(tmp_path: Path) -> None:
    body = f"""
{start_cmd(run_id="r1", bound=30)} || exit 10
old=$(cat {D}/pid)
{retake("r2")}
{start_cmd(run_id="r2", bound=30)}
kill -0 "$old" 2>/dev/null && echo "old: alive" || echo "old: gone"
echo "run: $(cat {D}/run)"
"""
    proc = run_in_namespaces(tmp_path, body)
    assert proc.stdout.splitlines() == ["started", "started", "old: gone", "run: r2"], (proc.stdout, proc.stderr)


def test_a_service_started_by_a_script_of_the_run_does_not_keep_the_watchdog_quiet(tmp_path: Path) -> None:
    """supervisor.sh starts the supervisor from a script of the run: the service must not inherit the
    run's busy lock, else the watchdog waits for it for ever."""
    body = f"""
{start_cmd(bound=2)} || exit 10
{device_cmd("supervisor", run_id="r1", op="start", insecure=False, images=[])} && echo "started the service"
until_ok 150 '[ -e {D}/fired ] && [ ! -e {D}/pid ]' && echo fired
"""
    proc = run_in_namespaces(tmp_path, body)
    assert proc.stdout.splitlines() == ["started", "started the service", "fired"], (proc.stdout, proc.stderr)


def test_watchdog_on_a_hostapp_device_runs_the_running_os_hooks(tmp_path: Path) -> None:
    """disarm_hooks (a balenaOS device, whose env the new OS's hooks armed): the watchdog runs
    DURING_UPDATE=0 hostapp-update-hooks when it fires, not the stored file operations."""
    hooks = tmp_path / "bin"
    hooks.mkdir()
    (hooks / "hostapp-update-hooks").write_text(
        '#!/bin/sh\necho "hooks DURING_UPDATE=$DURING_UPDATE" >> /mnt/hooks.log\n'
        "printf 'resin_root_part=2\\nupgrade_available=0\\n' > /mnt/boot/resinOS_uEnv.txt\n")
    (hooks / "hostapp-update-hooks").chmod(0o755)
    body = f"""
mkdir -p /mnt/bin && cp {shlex.quote(str(hooks / "hostapp-update-hooks"))} /mnt/bin/ && export PATH="/mnt/bin:$PATH"
{start_cmd()} || exit 10
{device_cmd("watchdog_ctl", run_id="r1", op="disarm_hooks", run="r1", ops=[])}
until_ok 200 '[ -e {D}/fired ] && [ ! -e {D}/pid ]' && echo "fired: $(cat {D}/fired)"
echo "hooks: $(cat /mnt/hooks.log 2>/dev/null)"
echo "env: $(tr '\\n' ' ' < /mnt/boot/resinOS_uEnv.txt)"
echo "left: $([ -e {D}/disarm.hooks ] && echo yes || echo no)"
"""
    proc = run_in_namespaces(tmp_path, body)
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr)
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert "put the env and boot files back for the running OS with its hooks; the supervisor runs" in lines["fired"], out
    assert lines["hooks"] == "hooks DURING_UPDATE=0", out
    assert lines["env"] == "resin_root_part=2 upgrade_available=0 ", out
    assert lines["left"] == "no", out


def test_watchdog_stop_forgets_the_hooks(tmp_path: Path) -> None:
    body = f"""
{start_cmd(bound=30)} || exit 10
{device_cmd("watchdog_ctl", run_id="r1", op="disarm_hooks", run="r1", ops=[])}
echo "stored: $([ -e {D}/disarm.hooks ] && echo yes || echo no)"
{stop_cmd("r1")}
echo "after stop: $([ -e {D}/disarm.hooks ] && echo yes || echo no)"
{device_cmd("watchdog_ctl", op="disarm_hooks", run="r9", ops=[])}
"""
    proc = run_in_namespaces(tmp_path, body)
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr)
    assert "stored\nstored: yes" in out and "after stop: no" in out and out.rstrip().endswith("none"), out


def test_the_lock_step_writes_the_watchdogs_scripts_as_sent(tmp_path: Path) -> None:
    """lock_step.sh reads its input in one jq: watchdog.sh and apply.sh on the device are the texts
    sent, each with one final newline (as jq -r wrote them), and the watchdog runs."""
    body = f"""
{start_cmd("r1", bound=30)} || exit 10
cat {D}/watchdog.sh; echo "=====SEP"; cat {D}/apply.sh; echo "=====SEP"
{stop_cmd("r1")}
"""
    proc = run_in_namespaces(tmp_path, body)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout.split("=====SEP\n")
    assert out[0] == "started\n" + shell.load("watchdog").text + "\n"
    assert out[1] == shell.load("apply").text + "\n"
    assert out[2].strip() == "stopped"


def test_a_watchdog_that_does_not_end_on_sigterm_is_killed_and_the_stop_says_so(tmp_path: Path) -> None:
    """Before: 'stopped' after 5 s of SIGTERM with the watchdog still running (and still holding
    what it held). A stand-in watchdog that ignores SIGTERM: the stop ends it with SIGKILL and says
    'killed'."""
    body = f"""
mkdir -p {D}
sh -c 'trap "" TERM; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done' &
pid=$!
echo "$pid" > {D}/pid; echo r1 > {D}/run
{stop_cmd("r1")}
kill -0 "$pid" 2>/dev/null && echo "watchdog: there" || echo "watchdog: gone"
[ -e {D}/pid ] && echo "pid file: kept" || echo "pid file: gone"
"""
    proc = run_in_namespaces(tmp_path, body)
    assert proc.stdout.splitlines() == ["killed", "watchdog: gone", "pid file: gone"], (proc.stdout, proc.stderr)
