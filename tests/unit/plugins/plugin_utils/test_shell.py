# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device script loader (plugin_utils.shell) and the session that runs the scripts by name."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError

SHELLS = [s for s in (["sh"], ["dash"], ["bash", "--posix"], ["busybox", "sh"]) if shutil.which(s[0])]
ALL = shell.script_names()


def test_every_script_is_there():
    assert set(ALL) >= {"apply", "boot_id", "fetch", "lock", "probe", "probe_cache", "probe_now", "probe_registry",
                        "probe_switch", "reboot", "run_log", "supervisor", "write_root"}


@pytest.mark.parametrize("name", ALL)
def test_every_script_declares_valid_parameters(name):
    script = shell.load(name)
    assert all(p.isidentifier() and p not in shell.RESERVED for p in script.names)
    assert script.text.endswith(script.body) and script.text.startswith("set -u\n")
    assert "#!/bin/sh" not in script.text, "the header stays out of what is sent"


#: the scripts that take the writer lock (fd 8) at their top level
WRITER_LOCK = re.compile(r"\nosfleet_writer_lock(_within [0-9]+)?\n")
WRITER_LOCKED = [n for n in ALL if WRITER_LOCK.search(shell.load(n).text)]


def test_the_writer_lock_scripts_are_found():
    assert set(WRITER_LOCKED) == {"fetch", "write_root", "hostapp_write", "hostapp_stamp", "takeover_stage", "takeover_drop", "takeover_flash"}


@pytest.mark.parametrize("name", WRITER_LOCKED)
def test_no_timeout_keeps_the_writer_lock(name):
    """busybox ``timeout`` (the devices') leaves a watcher process for up to a second after its command
    ended, holding every fd it inherited: under the writer lock (fd 8) every ``timeout`` closes fd 8
    (tests/integration/test_writer_guards.py shows the held lock on a lab device)."""
    body = WRITER_LOCK.split(shell.load(name).text, 1)[-1]
    lines = [line for line in body.splitlines() if "timeout " in line and not line.lstrip().startswith("#")]
    assert all("8>&-" in line for line in lines), [line for line in lines if "8>&-" not in line]


def composed(name: str) -> str:
    return shell.probe(name).text if name.startswith("probe_") else shell.load(name).text


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
@pytest.mark.parametrize("name", ALL)
def test_every_script_as_sent_parses(name, sh):
    proc = subprocess.run([*sh, "-n", "-c", composed(name)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ALL)
def test_every_script_as_sent_passes_shellcheck(name):
    """ansible-test's shellcheck reads the files; this checks the text the device gets (library included)."""
    proc = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2034", "-"], input=composed(name), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize(
    ("line", "params", "stdin"),
    [
        ("label=$1 dev=$2 mode=$3", ("label", "dev", "mode"), None),
        ("a=$1 b=${2} c=$(cat)", ("a", "b"), "c"),
        ("ops=$(cat)", (), "ops"),
        ("a=$1 b=$2 c=$3 d=$4 e=$5 f=$6 g=$7 h=$8 i=$9 j=${10}", tuple("abcdefghij"), None),
        ('setsid sh -c "sleep 1; reboot" & sleep 0.5', (), None),
        ('extra=$(osfleet_probe_extra "$@")', (), None),
        ("cat /proc/sys/kernel/random/boot_id", (), None),
    ],
)
def test_parse_params(line, params, stdin):
    assert shell.parse_params("x", line) == (params, stdin)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("a=$2", r"parameter a is \$2, expected \$1"),
        ("a=$1 b=$3", r"parameter b is \$3, expected \$2"),
        ("a=$(cat) b=$1", "the stdin parameter a must come last"),
        ("a=$1 a=$2", "declared twice"),
        ("check=$1", "cannot be parameter names"),
        ("what=$(cat)", "cannot be parameter names"),
        ("a=$1; b=$2", "must only assign its parameters"),
        ('a="$1"', "must only assign its parameters"),
        ("x=$(cat | head -n 1)", "must only assign its parameters"),
    ],
)
def test_parse_params_refuses(line, error):
    with pytest.raises(shell.ScriptError, match=error):
        shell.parse_params("x", line)


def test_command_takes_the_parameters_by_name():
    lock = shell.load("lock")
    assert lock.params == ("op", "expect", "doc") and lock.stdin is None
    cmd, stdin = lock.command(doc="{}", op="write", expect="")
    assert stdin is None
    argv = shlex.split(cmd)
    assert argv[:2] == ["sh", "-c"] and argv[2] == lock.text and argv[3:] == ["osfleet", "write", "", "{}"]


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"op": "write", "expect": ""}, "script lock: missing doc"),
        ({"op": "write", "expect": "", "doc": "{}", "owner": "x"}, "script lock: unknown owner"),
        ({}, "missing op, expect, doc"),
    ],
)
def test_command_refuses_missing_and_unknown_names(values, error):
    with pytest.raises(shell.ScriptError, match=error):
        shell.load("lock").command(**values)


def test_values_are_text_and_never_enter_the_script():
    fetch = shell.load("fetch")
    argv1, stdin1 = fetch.argv(cache="/c", insecure=True, input=[{"kind": "registry"}])
    argv2, stdin2 = fetch.argv(cache="'; reboot; '", insecure=False, input='[{"kind": "$(reboot)"}]')
    assert argv1[2] == argv2[2] == fetch.text
    assert argv1[4:] == ["/c", "1"] and argv2[4:] == ["'; reboot; '", "0"]
    assert stdin1 == '[{"kind": "registry"}]\n' and stdin2 == '[{"kind": "$(reboot)"}]\n'
    assert shell.load("run_log").argv(path=None, lines="", entry=7) == (["sh", "-c", shell.load("run_log").text, "osfleet", "", ""], "7\n")


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_values_reach_the_script_unchanged(sh, tmp_path):
    """run_log appends its lines (an argument), then its entry (stdin), to its path: odd values arrive byte for byte."""
    path = tmp_path / "dir with space" / "log"
    entry = "a 'quoted' \"value\" with $(reboot) and `reboot`\nand a second line\\n"
    lines = "carried 'first' $(reboot) `reboot` \\n\nand \"its\" second"
    argv, stdin = shell.load("run_log").argv(path=str(path), lines=lines, entry=entry)
    proc = subprocess.run([*sh, *argv[1:]], input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text() == lines + "\n" + entry + "\n"


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_a_run_log_entry_larger_than_one_argument_may_be(sh, tmp_path):
    """The entry of a step that copied a thousand boot files is larger than the kernel's 128 KiB
    limit of one argument (which a device shell's command line also has): it goes on stdin."""
    path = tmp_path / "log"
    entry = json.dumps({"actions": [f"replaced /mnt/boot/overlays/file-{n:05d}.dtbo from the inactive root" for n in range(3000)]})
    assert len(entry) > 128 * 1024
    argv, stdin = shell.load("run_log").argv(path=str(path), lines="", entry=entry)
    assert all(len(part) < 128 * 1024 for part in argv[3:])
    proc = subprocess.run([*sh, *argv[1:]], input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text() == entry + "\n"


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_stdin_parameter_reaches_the_script(sh):
    """probe_registry reads its registries from stdin; with enabled=0 it only counts them."""
    argv, stdin = shell.probe("probe_registry").argv(enabled=False, scheme="http", unless_versions="", registries=[{"name": "p", "registry": "r"}])
    script = argv[2].replace('if [ "$enabled" = 1 ]; then', 'echo "$(printf \'%s\' "$registries" | jq length) registries" >&2\nif false; then')
    proc = subprocess.run([*sh, "-c", script, *argv[3:]], input=stdin, capture_output=True, text=True, check=False)
    assert "1 registries" in proc.stderr


def test_library_functions_are_included_on_use():
    lib = shell.library()
    assert lib.preamble.startswith("set -u\nPATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH\n")
    assert 'if [ -n "${OSFLEET_RUN_ID:-}" ]' in lib.preamble, "the heartbeat of the run's watchdog"
    assert lib.needed_by("osfleet_apply_image x") == ["osfleet_in_root", "osfleet_tar_names", "osfleet_apply_layer", "osfleet_apply_image"]
    assert lib.needed_by("echo it failed", "my_fail", "fail-safe") == []
    assert lib.needed_by("x || fail 'no'") == ["fail"]
    write = shell.load("write_root")
    assert "osfleet_writer_lock() {" in write.text and "osfleet_verify_layout() {" not in write.text
    assert "fail() {" not in shell.load("boot_id").text


def test_library_must_be_well_formed():
    with pytest.raises(shell.ScriptError, match="has no closing"):
        shell._parse_library("set -u\nf() {\n  echo\n")  # pylint: disable=protected-access
    with pytest.raises(shell.ScriptError, match="code outside a function"):
        shell._parse_library("set -u\nf() {\n  echo\n}\necho stray\n")  # pylint: disable=protected-access


def test_probe_with_a_step_probe():
    script = shell.probe("probe_switch")
    assert script.name == "probe+probe_switch" and script.params == ("want", "variables", "marker", "keepback")
    assert "osfleet_probe_extra() {\nwant=$1 variables=$2 marker=$3 keepback=$4\n" in script.text
    assert "osfleet_read() {" in script.text
    plain = shell.probe()
    assert plain.params == () and "osfleet_probe_extra() {\n:\n}\n" in plain.text


#: the acts the steps run with their verifying probe in one round trip (shell.then_probe)
THEN_PROBE = [("apply", "probe_switch"), ("apply", None), ("supervisor", None)]


@pytest.mark.parametrize(("act", "extra"), THEN_PROBE)
def test_then_probe_composes_the_act_and_the_probe(act, extra):
    script = shell.then_probe(act, extra)
    first, then = script.parts
    assert script.name == f"{act}+{then.name}" and first is shell.load(act) and then is shell.probe(extra)
    assert script.params == first.params + then.params and script.stdin == (first.stdin or then.stdin)
    assert "osfleet_act() {\n" + first.body + "}\n" in script.text and script.text.endswith(shell.load("probe").body)
    for sh in SHELLS:
        proc = subprocess.run([*sh, "-n", "-c", script.text], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (sh, proc.stderr)
    # SC2317: the act's helper functions are called through others (apply.sh's "each check_one"),
    # which shellcheck does not follow once they sit inside osfleet_act
    proc = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2034,SC2317", "-"], input=script.text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_then_probe_refuses_parameters_it_cannot_tell_apart():
    with pytest.raises(shell.ScriptError, match="both read the standard input"):
        shell.then_probe("apply", "probe_registry")
    with pytest.raises(shell.ScriptError, match="share a parameter name: keepback, marker, variables, want"):
        shell.then_probe("probe_switch", "probe_switch")


@pytest.mark.parametrize("act", ["write_root", "fetch"])
def test_then_probe_refuses_an_act_with_a_trap(act):
    """A signal would end the script and leave the act's subshell running without its handler."""
    with pytest.raises(shell.ScriptError, match="sets a trap"):
        shell.then_probe(act)


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_then_probe_probes_after_the_act(sh, tmp_path):
    """The act runs first with its parameters and stdin, its output comes back on the first line,
    then the probe (with its own parameters) runs, reading what the act left."""
    path = tmp_path / "log"
    # probe_now prints the log's content (read after the act wrote it) instead of the time
    now = "printf '{\\n  \"now\": %s\\n}\\n' \"$(date +%s)\""
    assert now in shell.then_probe("run_log", "probe_now").text
    text = shell.then_probe("run_log", "probe_now").text.replace(now, f"jq -n --rawfile now {shlex.quote(str(path))} '{{now: $now}}'")
    argv, stdin = shell.then_probe("run_log", "probe_now").argv(path=str(path), lines="", entry="one 'line'\nand $(two)")
    proc = subprocess.run([*sh, "-c", text, *argv[3:]], input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    act, probed = shell.split_then_probe(proc.stdout)
    assert act == "" and json.loads(json.loads(probed)["extra"]) == {"now": "one 'line'\nand $(two)\n"}


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
@pytest.mark.parametrize("printed", ["", "one line", "two\nlines\n\n\n", "quotes ' \" \\ $(x) \t \u00e9 \u2603", "\n\nlead", "x" * 70000])
@pytest.mark.parametrize("extra", ["probe_now", None])
def test_then_probe_prints_the_acts_output_as_jq_did(sh, printed, extra, tmp_path):
    """The probe's jq prints the act's output first: the line `printf '%s' "$out" | jq -Rs .` printed;
    the step's part of the probe follows (none: "")."""
    script = shell.then_probe("run_log", extra)
    text = script.text.replace("osfleet_act() {\n", "osfleet_act() {\nprintf '%s' \"$OSFLEET_TEST_OUT\"; return 0\n", 1)
    argv, stdin = script.argv(path=str(tmp_path / "log"), lines="", entry="e")
    proc = subprocess.run([*sh, "-c", text, *argv[3:]], input=stdin, capture_output=True, text=True, check=False,
                          env={**os.environ, "OSFLEET_TEST_OUT": printed})
    assert proc.returncode == 0, proc.stderr
    kept = printed.rstrip("\n")  # what the command substitution keeps
    old = subprocess.run(["jq", "-Rs", "."], input=kept, capture_output=True, text=True, check=True).stdout
    assert proc.stdout.startswith(old)
    act, probed = shell.split_then_probe(proc.stdout)
    raw = json.loads(probed)
    assert act == kept and "then_act" not in raw
    assert json.loads(raw["extra"])["now"] > 0 if extra else raw["extra"] == ""


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_then_probe_stops_at_a_failing_act_and_goes_on_after_an_early_exit(sh, tmp_path):
    script = shell.then_probe("apply")
    argv, stdin = script.argv(ops=[["put", "/etc/passwd", "x"]])
    proc = subprocess.run([*sh, *argv[1:]], input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "refusing to write /etc/passwd" in proc.stderr and proc.stdout == "", "the probe ran"
    argv, stdin = script.argv(ops=[])  # apply.sh: "exit 0" when there is nothing to do
    proc = subprocess.run([*sh, *argv[1:]], input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    act, probed = shell.split_then_probe(proc.stdout)
    assert act == "" and "os_release" in json.loads(probed)


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_health_wait_waits_only_while_nothing_moved(sh):
    """scripts/health_wait.sh: no wait with seconds=0, after a move (another fingerprint) or on
    another boot; else up to seconds while the fingerprint stays (nothing moves on this machine)."""
    boot = open("/proc/sys/kernel/random/boot_id", encoding="ascii").read().strip()

    def wait(seconds: int, since: str, boot_id: str) -> tuple[str, float]:
        argv, _stdin = shell.load("health_wait").argv(seconds=seconds, since=since, boot=boot_id)
        start = time.monotonic()
        proc = subprocess.run([*sh, *argv[1:]], capture_output=True, text=True, check=False, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip(), time.monotonic() - start

    mark, took = wait(0, "", boot)
    assert re.fullmatch(r"[0-9a-f]{64}  -", mark) and took < 1
    assert wait(5, "other", boot)[1] < 1 and wait(5, mark, "another boot")[1] < 1
    again, took = wait(1, mark, boot)
    assert again == mark and 1 <= took < 3


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_health_wait_ends_when_the_device_moves(sh, tmp_path):
    """rollback-health's state file (here a file of the test's) changes half a second into a wait of
    up to 10 s: the wait ends then, with another fingerprint."""
    state = tmp_path / "rollback-health.state"
    state.write_text("testing\n")
    boot = open("/proc/sys/kernel/random/boot_id", encoding="ascii").read().strip()
    text = shell.load("health_wait").text.replace("/run/rollback-health.state", shlex.quote(str(state)))
    first = subprocess.run([*sh, "-c", text, "osfleet", "0", "", boot], capture_output=True, text=True, check=True).stdout.strip()
    start = time.monotonic()
    with subprocess.Popen([*sh, "-c", text, "osfleet", "10", first, boot], stdout=subprocess.PIPE, text=True) as proc:
        time.sleep(0.5)
        state.write_text("committed\n")
        out, _err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() != first and time.monotonic() - start < 3


def test_split_then_probe():
    assert shell.split_then_probe(shell.join_then_probe("a\nb\n", '{"x": 1}\n')) == ("a\nb", '{"x": 1}\n')
    for bad in ('{"x": 1}\n', "", '"unterminated\n{}', "1\n{}"):
        with pytest.raises(ValueError, match="not a JSON string on the first line"):
            shell.split_then_probe(bad)


def test_unknown_script():
    with pytest.raises(shell.ScriptError, match="no device script nope"):
        shell.load("nope")
    with pytest.raises(shell.ScriptError, match="invalid script name"):
        shell.load("../x")


def test_user_command():
    assert shlex.split(shell.user_command("systemctl is-active 'a b'")) == ["sh", "-c", "systemctl is-active 'a b'", "osfleet"]


# --- the session -------------------------------------------------------------------------------------

class Action:
    """What DeviceSession needs of an action plugin: _low_level_execute_command."""

    def __init__(self, rc: int = 0, stdout: str = "{}", stderr: str = "") -> None:
        self.calls: list[dict[str, t.Any]] = []
        self.answer = {"rc": rc, "stdout": stdout, "stderr": stderr}

    def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
        self.calls.append({"cmd": cmd, "sudoable": sudoable, "in_data": in_data})
        return self.answer


def test_session_runs_a_script_by_name_with_its_stdin():
    action = Action(stdout='{"ok": true}')
    session = DeviceSession(action, "dev1")  # type: ignore[arg-type]
    assert session.run_json("supervisor", op="update", insecure=True, images=["r/s:v1"]) == {"ok": True}
    (call,) = action.calls
    assert call["sudoable"] is False and call["in_data"] == '["r/s:v1"]\n'
    assert shlex.split(call["cmd"])[3:] == ["osfleet", "update", "1"]
    assert session.round_trips == 1


def test_session_raises_on_failure_unless_told_not_to():
    session = DeviceSession(Action(rc=3, stdout="", stderr="boom\n"), "dev1")  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match=r"writing the lock failed on the device \(exit 3\): boom"):
        session.run("lock", op="remove", expect="", doc="{}", what="writing the lock")
    assert session.run("boot_id", check=False).rc == 3


def test_session_refuses_a_wrong_parameter_before_anything_runs():
    action = Action()
    session = DeviceSession(action, "dev1")  # type: ignore[arg-type]
    with pytest.raises(shell.ScriptError, match="unknown force"):
        session.run("lock", op="remove", expect="", doc="{}", force=True)
    assert action.calls == []


def test_session_runs_user_commands_with_sh_c():
    action = Action(stdout="ok")
    DeviceSession(action, "dev1").run_command("test -f /x && echo ok")  # type: ignore[arg-type]
    assert shlex.split(action.calls[0]["cmd"]) == ["sh", "-c", "test -f /x && echo ok", "osfleet"]
    assert action.calls[0]["in_data"] is None


def test_json_output_of_a_probe_is_checked():
    session = DeviceSession(Action(stdout="[1, 2]"), "dev1")  # type: ignore[arg-type]
    with pytest.raises(DeviceError, match="not an object"):
        session.run_json("probe_now")
    session = DeviceSession(Action(stdout=json.dumps({"now": 1}) + "\n"), "dev1")  # type: ignore[arg-type]
    assert session.run_json("probe_now") == {"now": 1}


SUPERVISOR_IMAGE = "registry.example/balena/supervisor@sha256:" + "a" * 64


@pytest.mark.parametrize("sh", SHELLS, ids=[s[0] for s in SHELLS])
def test_supervisor_update_tries_each_image_in_order(sh, tmp_path):
    """scripts/supervisor.sh op=update (its images read in one jq): every image must be pulled by
    digest; the first that update-balena-supervisor takes is printed, the errors of the others
    otherwise."""
    tool = tmp_path / "update-balena-supervisor"
    tool.write_text('#!/bin/sh\necho "$*" >> "$OSFLEET_TEST_LOG"\ncase $2 in *bad*) echo "no: $2" >&2; exit 1 ;; esac\n')
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{os.environ['PATH']}:{tmp_path}", "OSFLEET_TEST_LOG": str(tmp_path / "log")}
    odd = "bad 'one' $(touch x)/supervisor@sha256:" + "b" * 64

    def update(images: t.Any) -> subprocess.CompletedProcess[str]:
        argv, stdin = shell.load("supervisor").argv(op="update", insecure=True, images=images)
        return subprocess.run([*sh, *argv[1:]], input=stdin, capture_output=True, text=True, check=False, env=env, cwd=tmp_path)

    proc = update([odd, SUPERVISOR_IMAGE])
    assert proc.returncode == 0 and proc.stdout == SUPERVISOR_IMAGE + "\n", proc.stderr
    assert (tmp_path / "log").read_text() == f"-i {odd} -t\n-i {SUPERVISOR_IMAGE} -t\n" and not (tmp_path / "x").exists()
    proc = update([odd])
    assert proc.returncode == 1 and proc.stderr.strip() == f"update-balena-supervisor failed from every registry: {odd}: no: {odd} ;"
    proc = update([SUPERVISOR_IMAGE, "balena/supervisor:v14"])
    assert proc.returncode == 1 and "refusing supervisor image balena/supervisor:v14: not pulled by digest" in proc.stderr
    proc = update({"not": "a list"})
    assert proc.returncode == 1 and "the images are not a JSON list" in proc.stderr
