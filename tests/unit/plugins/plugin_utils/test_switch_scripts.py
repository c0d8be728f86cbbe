# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch steps' device scripts (scripts/probe_switch.sh, apply.sh, reboot.sh), run for real in
a private mount namespace whose /mnt is a tmpfs (root and unshare needed; skipped otherwise). Each
script runs under dash and under busybox sh (the device's shell)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import keepback, reconnect
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootcopy import plan_boot_copy
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import FILE_LIMIT
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import Op, finish_ops, validate_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe, parse_switch_probe
from ansible_collections.osfleet.hup.plugins.plugin_utils import shell as scripts

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("jq"), reason="needs root, unshare and jq"
)

SHELLS = ["sh"] + (["busybox sh"] if shutil.which("busybox") else [])

SETUP = r"""
set -e
mount -t tmpfs -o size=8m osfleet-test /mnt
mkdir -p /mnt/boot /mnt/state /mnt/sysroot/active/resin-boot/EFI/BOOT /mnt/sysroot/inactive/resin-boot/overlays
{boot_mount}
cd /mnt/sysroot/active/resin-boot && printf old-kernel > bzImage && printf old-efi > EFI/BOOT/bootx64.efi
cd /mnt/sysroot/inactive/resin-boot && printf new-kernel > bzImage && printf 'with space' > 'over lays.txt' && printf x > overlays/a.dtbo
{payload_extra}
cd /mnt/boot && printf old-kernel > bzImage && printf '{{"uuid":"u"}}' > config.json && printf 'resin_root_part=2\nupgrade_available=0\n' > resinOS_uEnv.txt
printf 'bootcount=1\n' > bootcount.env && printf 'stale' > bzImage.osfleet-tmp
cd /
"""


def run_in_namespace(tmp_path: Path, body: str, *, boot_mount: str = "", payload_extra: str = "") -> subprocess.CompletedProcess[str]:
    driver = tmp_path / "driver.sh"
    driver.write_text(SETUP.format(boot_mount=boot_mount, payload_extra=payload_extra) + "set +e\n" + body)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", str(driver)],
                          capture_output=True, text=True, timeout=240, check=False)


def script_cmd(sh: str, name: str, **params: object) -> str:
    """The command line that runs the device script ``name`` under the shell ``sh``, its stdin piped in."""
    argv, stdin = scripts.load(name).argv(**params)
    cmd = " ".join([sh] + [shlex.quote(part) for part in argv[1:]])
    return cmd if stdin is None else f"printf '%s' {shlex.quote(stdin)} | {cmd}"


def probe_cmd(sh: str) -> str:
    """The device probe with the switch probe, as the switch steps run it."""
    argv, _stdin = scripts.probe("probe_switch").argv(want="files", variables="/mnt/state/rollback-health-variables",
                                                      marker="/mnt/state/osfleet-rollback", keepback="/mnt/state/osfleet/keepback-before.sha256")
    return " ".join([sh] + [shlex.quote(part) for part in argv[1:]])


def switch_probe(stdout: str) -> tuple[dict[str, str], SwitchProbe]:
    """The device probe's JSON and its switch part, parsed."""
    raw = json.loads(stdout)
    return raw, parse_switch_probe(json.loads(raw["extra"]))


@pytest.mark.parametrize("shell", SHELLS)
def test_switch_probe_lists_the_files(tmp_path, shell):
    proc = run_in_namespace(tmp_path, probe_cmd(shell), payload_extra="ln -s nowhere dangling && printf y > \"$(printf 'new\\nline')\"")
    assert proc.returncode == 0, proc.stderr
    raw, probe = switch_probe(proc.stdout)
    assert raw["bootcount_present"] == "1" and probe.listed
    assert 0 < probe.boot_free_bytes <= 8 * 1024 * 1024
    assert set(probe.boot.files) == {"bzImage", "config.json", "resinOS_uEnv.txt", "bootcount.env", "bzImage.osfleet-tmp"}
    assert probe.boot.files["bzImage"].size == len("old-kernel")
    assert probe.boot.files["bzImage"].md5 == hashlib.md5(b"old-kernel").hexdigest()
    assert probe.payloads["inactive"].files["over lays.txt"].md5 == hashlib.md5(b"with space").hexdigest()
    assert set(probe.payloads["active"].files) == {"bzImage", "EFI/BOOT/bootx64.efi"}
    inactive = probe.payloads["inactive"]
    assert set(inactive.files) == {"bzImage", "over lays.txt", "overlays/a.dtbo"}
    assert "dangling" in inactive.bad and any("line" in b for b in inactive.bad) and "new" in inactive.bad


HOOK = Path(__file__).resolve().parents[4] / "tests/lab/osfleet_lab/os/rootfs/etc/hostapp-update-hooks.d/1-bootfiles"
#: files on the boot partition besides SETUP's: env files (left out), odd names, vfat-style case
BOOT_EXTRA = r"""
cd /mnt/boot && mkdir -p grub EFI/BOOT 'sub dir' && printf g > grub/grubenv && printf e > EFI/BOOT/grubenv
printf b > bootenv && printf u > Zz && printf l > a.b && printf s > 'sub dir/x y' && printf t > EFI/BOOT/bootx64.efi
printf 'old fingerprint' > balenaos.fingerprint && printf half > EFI/BOOT/bootx64.efi.osfleet-tmp
cd /
"""


def hook_fingerprint_part() -> str:
    """The fingerprint command of the lab device's 1-bootfiles hook, as it is in the file."""
    match = re.search(r'^\(cd "\$BOOT" && find .*?mv -f "\$BOOT/balenaos\.fingerprint\.osfleet-tmp" "\$BOOT/balenaos\.fingerprint"$',
                      HOOK.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"no fingerprint command found in {HOOK}"
    return "BOOT=/mnt/boot\n" + match.group(0) + "\n"


def busybox_tools(tmp_path: Path) -> str:
    """A PATH directory whose find/sort/md5sum/sed/mv are busybox applets, as on the device."""
    tools = tmp_path / "busybox-bin"
    tools.mkdir()
    for name in ("find", "sort", "md5sum", "sed", "mv"):
        (tools / name).symlink_to(shutil.which("busybox"))
    return str(tools)


@pytest.mark.parametrize("tools", ["busybox", "gnu"])
def test_fingerprint_is_byte_identical_to_the_hook(tmp_path, tools):
    if tools == "busybox" and not shutil.which("busybox"):
        pytest.skip("needs busybox")
    # 1. probe the device as the bootfiles step does and plan the copy of the inactive payload
    proc = run_in_namespace(tmp_path, BOOT_EXTRA + probe_cmd("sh"))
    assert proc.returncode == 0, proc.stderr
    probe = switch_probe(proc.stdout)[1]
    copy = plan_boot_copy("/mnt/sysroot/inactive/resin-boot", probe.payloads["inactive"], probe.boot, probe.boot_free_bytes, reserve=0)
    fingerprint = copy.plan.fingerprint
    assert ("put", "/mnt/boot/" + keepback.FINGERPRINT_FILE, fingerprint) in copy.ops
    # 2. on the same device: apply the plan, keep what it wrote, then let the hook regenerate it
    path = busybox_tools(tmp_path) if tools == "busybox" else "/usr/bin:/bin"
    body = (BOOT_EXTRA + apply_cmd("sh", copy.ops) + "\ncp /mnt/boot/balenaos.fingerprint /mnt/ours || exit 9\n"
            + f"(export LC_ALL=C PATH={shlex.quote(path)}:$PATH\n{hook_fingerprint_part()}) || exit 8\n"
            + "cat /mnt/ours; echo '=== hook'; cat /mnt/boot/balenaos.fingerprint\n")
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    ours, sep, hooks = proc.stdout.partition("=== hook\n")
    assert sep and ours == fingerprint
    assert ours == hooks
    lines = ours.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == sorted(
        ["/EFI/BOOT/bootx64.efi", "/Zz", "/a.b", "/bzImage", "/over lays.txt", "/overlays/a.dtbo", "/sub dir/x y"]
    )
    assert f"{hashlib.md5(b'new-kernel').hexdigest()}  /bzImage" in lines


def apply_cmd(sh: str, ops: list[Op]) -> str:
    validate_ops(ops)
    return script_cmd(sh, "apply", ops=[list(op) for op in ops])


SHOW = "\necho rc=$?; cd /mnt && find boot state -type f | sort | while IFS= read -r f; do printf '%s=' \"$f\"; tr '\\n' '|' < \"$f\"; echo; done\n"


def files(stdout: str) -> tuple[int, dict[str, str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rc="))
    return int(lines[start][3:]), dict(line.split("=", 1) for line in lines[start + 1:] if "=" in line)


@pytest.mark.parametrize("shell", SHELLS)
def test_apply_writes_copies_and_removes(tmp_path, shell):
    ops = [
        ("copy", "/mnt/boot/bzImage", "/mnt/sysroot/inactive/resin-boot/bzImage"),
        ("copy", "/mnt/boot/new dir/over lays.txt", "/mnt/sysroot/inactive/resin-boot/over lays.txt"),
        ("put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=3\nupgrade_available=1\n"),
        ("del", "/mnt/boot/bootcount.env", ""),
        ("del", "/mnt/boot/bzImage.osfleet-tmp", ""),  # dropped by finish_ops: the copy writes it anew
        ("put", "/mnt/state/rollback-health-variables", "BALENAOS_ROLLBACK_VPNONLINE=0\n"),
        ("put", "/mnt/state/rollback-health-breadcrumb", ""),
        ("del", "/mnt/state/not-there", ""),
    ]
    proc = run_in_namespace(tmp_path, apply_cmd(shell, finish_ops(ops)) + SHOW)
    rc, result = files(proc.stdout)
    assert rc == 0, proc.stderr
    assert result == {
        "boot/bzImage": "new-kernel",
        "boot/config.json": '{"uuid":"u"}',
        "boot/new dir/over lays.txt": "with space",
        "boot/resinOS_uEnv.txt": "resin_root_part=3|upgrade_available=1|",
        "state/rollback-health-variables": "BALENAOS_ROLLBACK_VPNONLINE=0|",
        "state/rollback-health-breadcrumb": "",
    }


#: contents a put writes byte for byte (apply.sh reads them with the list, in one jq)
ODD_CONTENTS = ["", "'", "a'b'\\'c", "$(touch /mnt/boot/x) `id` $HOME \\n", "\n\n\n", "tail\n\n", "\u00e9\u2603\U0001F600\r\n", "x" * 70000 + "\n"]


@pytest.mark.parametrize("shell", SHELLS)
def test_apply_puts_each_content_exactly(tmp_path, shell):
    ops = [("put", f"/mnt/state/put-{i}", content) for i, content in enumerate(ODD_CONTENTS)]
    ops.insert(2, ("copy", "/mnt/boot/bzImage", "/mnt/sysroot/inactive/resin-boot/bzImage"))
    out = tmp_path / "out"
    body = apply_cmd(shell, ops) + f"\necho rc=$?\nmkdir -p {out} && cp /mnt/state/put-* {out}/ && ls /mnt/boot\n"
    proc = run_in_namespace(tmp_path, body)
    assert "rc=0" in proc.stdout, proc.stderr
    assert "x" not in proc.stdout.split("rc=0", 1)[1].split()
    for i, content in enumerate(ODD_CONTENTS):
        assert (out / f"put-{i}").read_bytes() == content.encode(), i


@pytest.mark.parametrize("shell", SHELLS)
def test_apply_on_a_full_partition_changes_nothing(tmp_path, shell):
    big = "dd if=/dev/zero of=/mnt/sysroot/inactive/resin-boot/big bs=1024 count=200 2>/dev/null"
    ops = [
        ("put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=3\nupgrade_available=1\n"),
        ("copy", "/mnt/boot/big", "/mnt/sysroot/inactive/resin-boot/big"),
    ]
    proc = run_in_namespace(tmp_path, apply_cmd(shell, ops) + SHOW, boot_mount="mount -t tmpfs -o size=96k osfleet-boot /mnt/boot", payload_extra=big)
    rc, result = files(proc.stdout)
    assert rc == 1
    assert "writing the new files failed; nothing was changed" in proc.stderr
    assert result["boot/resinOS_uEnv.txt"] == "resin_root_part=2|upgrade_available=0|"
    assert "boot/big" not in result and "boot/resinOS_uEnv.txt.osfleet-tmp" not in result and "boot/big.osfleet-tmp" not in result


@pytest.mark.parametrize(
    "ops, error",
    [
        ([("put", "/etc/x", "y")], "refusing to write /etc/x"),
        ([("put", "/mnt/boot/../x", "y")], "refusing the path"),
        ([("copy", "/mnt/boot/x", "/mnt/sysroot/inactive/resin-boot/missing")], "the source /mnt/sysroot/inactive/resin-boot/missing is missing"),
        ([("put", "/mnt/boot", "y")], "refusing to write /mnt/boot"),
        ([("frob", "/mnt/boot/x", "")], "unknown file operation frob"),
    ],
)
def test_apply_refuses_bad_operations(tmp_path, ops, error):
    # straight to the script, without validate_ops: the script checks too (defence in depth)
    cmd = script_cmd("sh", "apply", ops=[list(op) for op in ops])
    proc = run_in_namespace(tmp_path, cmd + SHOW)
    rc, result = files(proc.stdout)
    assert rc == 1 and error in proc.stderr
    assert result["boot/resinOS_uEnv.txt"] == "resin_root_part=2|upgrade_available=0|"


def test_apply_refuses_an_odd_number_of_values(tmp_path):
    proc = run_in_namespace(tmp_path, script_cmd("sh", "apply", ops=[["put", "/mnt/boot/x"]]) + SHOW)
    assert files(proc.stdout)[0] == 1 and "triples" in proc.stderr


def test_reboot_script_is_detached():
    # the lab-facts pattern: setsid + redirections + a trailing sleep, or the child dies with the pty
    body = scripts.load("reboot").body.strip()
    assert shlex.split(body)[0] == "setsid" and body.endswith("& sleep 0.2")
    # it returns before the reboot starts (the first boot id poll waits reconnect.FIRST_BOOT_POLL after it)
    assert "'sleep 0.5; reboot'" in body and reconnect.FIRST_BOOT_POLL > 0.5 - 0.2


# --- issue 7: many boot files, bounded reads, the order of the writes, no rename over a file -----

MANY = r"""
mkdir -p /mnt/boot/overlays /mnt/sysroot/inactive/resin-boot/overlays
i=0
while [ $i -lt 1100 ]; do
  n=$(printf 'overlays/a-device-tree-overlay-with-a-rather-long-name-%05d.dtbo' $i)
  printf 'old %s' $i > "/mnt/boot/$n"; printf 'new %s' $i > "/mnt/sysroot/inactive/resin-boot/$n"
  i=$((i + 1))
done
"""


# --- issue 7: the staged root's links never name the running system's files; vfat renames ---------------

OUTSIDE = "mkdir -p /mnt/outside && printf secret > /mnt/outside/secret && ln -s /mnt/outside/secret linked"


@pytest.mark.parametrize("shell", SHELLS)
def test_copy_sources_resolve_inside_their_root(tmp_path, shell):
    """A boot file of the staged root that is an absolute link is read inside that root, never
    from the running system (/mnt/outside stands for it here)."""
    ops = [("copy", "/mnt/boot/linked", "/mnt/sysroot/inactive/resin-boot/linked")]
    proc = run_in_namespace(tmp_path, apply_cmd(shell, ops) + SHOW, payload_extra=OUTSIDE)
    rc, result = files(proc.stdout)
    assert rc == 1 and "the source /mnt/sysroot/inactive/mnt/outside/secret is missing" in proc.stderr, proc.stderr
    assert "boot/linked" not in result
    inside = "mkdir -p /mnt/sysroot/inactive/mnt/outside && printf inside > /mnt/sysroot/inactive/mnt/outside/secret\n"
    proc = run_in_namespace(tmp_path, inside + apply_cmd(shell, ops) + SHOW, payload_extra=OUTSIDE)
    rc, result = files(proc.stdout)
    assert rc == 0 and result["boot/linked"] == "inside", proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_switch_probe_never_hashes_the_running_system_through_a_link(tmp_path, shell):
    proc = run_in_namespace(tmp_path, probe_cmd(shell), payload_extra=OUTSIDE)
    assert proc.returncode == 0, proc.stderr
    _raw, probe = switch_probe(proc.stdout)
    assert "linked" not in probe.payloads["inactive"].files and "linked" in probe.payloads["inactive"].bad
    # the payload directory itself as an absolute link: followed inside the root
    relink = ("mv /mnt/sysroot/inactive/resin-boot /mnt/sysroot/inactive/real-boot && "
              "ln -s /real-boot /mnt/sysroot/inactive/resin-boot && mkdir -p /real-boot && printf host > /real-boot/hostfile\n")
    proc = run_in_namespace(tmp_path, relink + probe_cmd(shell))
    assert proc.returncode == 0, proc.stderr
    _raw, probe = switch_probe(proc.stdout)
    assert set(probe.payloads["inactive"].files) == {"bzImage", "over lays.txt", "overlays/a.dtbo"}


#: mv that refuses to rename over an existing file (vfat does that as an unlink and a rename)
NO_RENAME_OVER = r"""mv() {
  for last; do :; done
  if [ -e "$last" ] && [ ! -d "$last" ]; then echo "renamed over $last" >&2; return 1; fi
  command mv "$@"
}
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_switch_probe_lists_more_than_a_thousand_boot_files(tmp_path, shell):
    """Each listing of 1100 files is larger than the 128 KiB one argument may be (it was one jq
    --arg each, and the whole switch probe one more)."""
    big_boot = "mount -t tmpfs -o size=32m osfleet-boot /mnt/boot"
    proc = run_in_namespace(tmp_path, MANY + probe_cmd(shell), boot_mount=big_boot)
    assert proc.returncode == 0, proc.stderr
    raw, probe = switch_probe(proc.stdout)
    assert len(json.loads(raw["extra"])["boot_sha"]) > 128 * 1024
    assert len([n for n in probe.boot.files if n.startswith("overlays/")]) == 1100
    assert len(probe.payloads["inactive"].files) == 1100 + 3
    copy = plan_boot_copy("/mnt/sysroot/inactive/resin-boot", probe.payloads["inactive"], probe.boot, probe.boot_free_bytes, reserve=0,
                          block_size=probe.boot_block_size)
    assert len(copy.plan.copy) == 1100 + 3
    ops = apply_cmd(shell, copy.ops)
    proc = run_in_namespace(tmp_path, MANY + ops + "\necho rc=$?; cat /mnt/boot/overlays/a-device-tree-overlay-with-a-rather-long-name-01099.dtbo",
                            boot_mount=big_boot)
    assert "rc=0\nnew 1099" in proc.stdout, proc.stderr


def test_the_probe_reads_no_more_of_a_file_than_the_controller_accepts(tmp_path):
    """osfleet_read sends one byte more than FILE_LIMIT: the controller refuses the file, never
    a silently truncated one, and the 128 KiB argument limit is never reached."""
    big = "head -c 300000 /dev/zero | tr '\\0' x > /mnt/state/osfleet-rollback\n"
    proc = run_in_namespace(tmp_path, big + probe_cmd("sh"))
    assert proc.returncode == 0, proc.stderr
    extra = json.loads(json.loads(proc.stdout)["extra"])
    assert len(extra["rollback_marker"]) == FILE_LIMIT + 1
    with pytest.raises(DeviceError, match="/mnt/state/osfleet-rollback on the device is larger than 64 KiB"):
        parse_switch_probe(extra)


def wrap_tools(names: tuple[str, ...]) -> str:
    """Shell lines that replace the tools ``names`` (in /usr/bin, the first PATH entry of the
    scripts) by wrappers that log each call to /mnt/trace, and for mv whether its target exists."""
    lines = ["mkdir -p /mnt/real"]
    for name in names:
        lines += [
            f"cp \"$(command -v {name})\" /mnt/real/{name}",
            f"printf '#!/bin/sh\\nlast=; for a; do last=$a; done\\n"
            f"if [ {name} = mv ] && [ -e \"$last\" ]; then echo \"OVER $*\" >> /mnt/trace; fi\\n"
            f"echo \"{name} $*\" >> /mnt/trace\\nexec /mnt/real/{name} \"$@\"\\n' > /mnt/real/{name}-wrapper",
            f"chmod +x /mnt/real/{name}-wrapper",
            f"mount --bind /mnt/real/{name}-wrapper \"$(readlink -f \"$(command -v {name})\")\"",
        ]
    return "\n".join(lines) + "\n"


def test_apply_syncs_each_write_before_the_next_and_never_renames_over_a_file(tmp_path):
    """Arming: the breadcrumbs in /mnt/state first, each synced, then the env on /mnt/boot,
    synced; the existing env is renamed away (a new name) before the new one takes its name."""
    ops = [
        ("put", "/mnt/state/rollback-health-breadcrumb", ""),
        ("put", "/mnt/state/rollback-altboot-breadcrumb", ""),
        ("put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=3\nupgrade_available=1\n"),
        ("del", "/mnt/boot/bootcount.env", ""),
    ]
    body = wrap_tools(("mv", "sync", "rm")) + apply_cmd("sh", ops) + "\necho rc=$?; echo ===; cat /mnt/trace\n"
    proc = run_in_namespace(tmp_path, body)
    out, _sep, trace = proc.stdout.partition("===\n")
    assert "rc=0" in out, proc.stderr
    calls = [line for line in trace.splitlines() if not line.startswith(("rm -f /mnt/state/rollback-health-breadcrumb.osfleet-old",
                                                                         "rm -f /mnt/state/rollback-altboot-breadcrumb.osfleet-old"))]
    assert not [c for c in calls if c.startswith("OVER")], calls

    def index(prefix: str) -> int:
        return next(i for i, c in enumerate(calls) if c.startswith(prefix))
    health = index("mv /mnt/state/rollback-health-breadcrumb.osfleet-tmp /mnt/state/rollback-health-breadcrumb")
    altboot = index("mv /mnt/state/rollback-altboot-breadcrumb.osfleet-tmp /mnt/state/rollback-altboot-breadcrumb")
    away = index("mv /mnt/boot/resinOS_uEnv.txt /mnt/boot/resinOS_uEnv.txt.osfleet-old.osfleet-tmp")
    env = index("mv /mnt/boot/resinOS_uEnv.txt.osfleet-tmp /mnt/boot/resinOS_uEnv.txt")
    count = index("rm -f /mnt/boot/bootcount.env")
    assert health < altboot < away < env < count
    for before, after in ((health, altboot), (altboot, away), (away, env), (env, count)):
        assert any(c.startswith("sync") for c in calls[before + 1:after]), f"no sync between {calls[before]!r} and {calls[after]!r}"
    assert calls[count + 1].startswith("sync")
    assert "rm -f /mnt/boot/resinOS_uEnv.txt.osfleet-old.osfleet-tmp" in calls[env:]


@pytest.mark.parametrize("shell", SHELLS)
def test_apply_puts_back_a_file_a_power_cut_left_as_its_old_copy(tmp_path, shell):
    """A cut between the two renames leaves <dst>.osfleet-old.osfleet-tmp and no <dst>."""
    cut = "mv /mnt/boot/resinOS_uEnv.txt /mnt/boot/resinOS_uEnv.txt.osfleet-old.osfleet-tmp\n"
    ops = [("put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=3\nupgrade_available=1\n")]
    rc, result = files(run_in_namespace(tmp_path, cut + apply_cmd(shell, ops) + SHOW).stdout)
    assert rc == 0 and result["boot/resinOS_uEnv.txt"] == "resin_root_part=3|upgrade_available=1|"
    assert not [n for n in result if "osfleet-old" in n]
    # put back first, even when the new files then do not fit
    big = "dd if=/dev/zero of=/mnt/sysroot/inactive/resin-boot/big bs=1024 count=200 2>/dev/null"
    ops.append(("copy", "/mnt/boot/big", "/mnt/sysroot/inactive/resin-boot/big"))
    proc = run_in_namespace(tmp_path, cut + apply_cmd(shell, ops) + SHOW, boot_mount="mount -t tmpfs -o size=96k osfleet-boot /mnt/boot",
                            payload_extra=big)
    rc, result = files(proc.stdout)
    assert rc == 1 and "nothing was changed" in proc.stderr
    assert result["boot/resinOS_uEnv.txt"] == "resin_root_part=2|upgrade_available=0|"
    assert not [n for n in result if "osfleet-old" in n]


@pytest.mark.parametrize(
    "ops, error",
    [
        ([("put", "/mnt/boot/a\nb", "y")], "file operations come in triples"),  # a line break: jq refuses it
        ([("put", "/mnt/boot//x", "y")], "refusing the path /mnt/boot//x"),
        ([("put", "/mnt/boot/./x", "y")], "refusing the path /mnt/boot/./x"),
        ([("put", "/mnt/state/..", "y")], "refusing the path /mnt/state/.."),
        ([("put", "/mnt/boot/EFI", "y")], "/mnt/boot/EFI is a directory"),
    ],
)
def test_apply_refuses_more_bad_operations(tmp_path, ops, error):
    cmd = "mkdir -p /mnt/boot/EFI\n" + script_cmd("sh", "apply", ops=[list(op) for op in ops])
    proc = run_in_namespace(tmp_path, cmd + SHOW)
    rc, result = files(proc.stdout)
    assert rc == 1 and error in proc.stderr, proc.stderr
    assert result["boot/resinOS_uEnv.txt"] == "resin_root_part=2|upgrade_available=0|"


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_the_registry_check_writes_no_predictable_file_in_tmp(tmp_path):
    """The script is PID 1 of its own PID namespace: the old /tmp/osfleet-curl.$$ was
    /tmp/osfleet-curl.1, and a symlink there made curl's error text overwrite its target."""
    argv, stdin = scripts.probe("probe_registry").argv(enabled=True, scheme="http", unless_versions="", registries=[{"name": "p", "registry": "127.0.0.1:9"}])
    driver = tmp_path / "driver.sh"
    cmd = " ".join(shlex.quote(part) for part in argv)
    driver.write_text(
        "set -e\nmount -t tmpfs osfleet-tmp /tmp\nprintf precious > /tmp/victim\nln -s /tmp/victim /tmp/osfleet-curl.1\n"
        f"out=$(printf '%s' {shlex.quote(stdin or '')} | unshare -p -f {cmd})\n"
        "printf '%s\\n===\\n' \"$out\"; cat /tmp/victim\n"
    )
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", str(driver)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out, _sep, victim = proc.stdout.partition("===\n")
    assert victim == "precious"
    extra = json.loads(json.loads(out)["extra"])
    assert extra["registries"][0]["error"], extra


@pytest.mark.parametrize("shell", SHELLS)
def test_the_probe_tells_a_rollback_marker_newer_than_the_inactive_stamp(tmp_path, shell):
    """A *-triggered marker names the inactive root's release only when it is newer than the
    root's stamp (a root written after the rollback holds another release)."""
    body = (
        "printf '{}' > /mnt/sysroot/inactive/.osfleet-release.json && touch -d '2026-01-02 00:00' /mnt/sysroot/inactive/.osfleet-release.json\n"
        "touch -d '2026-01-03 00:00' /mnt/state/rollback-altboot-triggered\n"
        "touch -d '2026-01-01 00:00' /mnt/state/rollback-health-triggered\n"
        "printf '{\"reason\": \"checks\", \"from_version\": \"2.113.0\"}' > /mnt/state/osfleet-rollback\n"
        + probe_cmd(shell)
    )
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(proc.stdout)
    assert raw["triggered_newer"].split() == ["rollback-altboot-triggered"]
    assert json.loads(raw["rollback_record"])["from_version"] == "2.113.0"
    proc = run_in_namespace(tmp_path, "touch /mnt/state/rollback-health-triggered\n" + probe_cmd(shell))
    assert json.loads(proc.stdout)["triggered_newer"].split() == ["rollback-health-triggered"]  # no stamp at all


def test_apply_reports_a_rename_that_fails_part_way(tmp_path):
    """The first file is in place, the second rename fails: the script says so and fails."""
    ops = [("put", "/mnt/state/rollback-health-breadcrumb", ""), ("put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=3\n")]
    refuse = ("cp \"$(command -v mv)\" /mnt/real-mv && printf '#!/bin/sh\\nfor a; do last=$a; done\\n"
              "[ \"$last\" = /mnt/boot/resinOS_uEnv.txt ] && exit 1\\nexec /mnt/real-mv \"$@\"\\n' > /mnt/mv-wrapper && chmod +x /mnt/mv-wrapper"
              " && mount --bind /mnt/mv-wrapper \"$(readlink -f \"$(command -v mv)\")\"\n")
    proc = run_in_namespace(tmp_path, refuse + apply_cmd("sh", ops) + SHOW)
    rc, result = files(proc.stdout)
    assert rc == 1 and "renaming the new files into place failed part way" in proc.stderr, proc.stderr
    assert "state/rollback-health-breadcrumb" in result


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("os_release", "skipped"), [
    ('NAME="balenaOS"\nVERSION="2.113.0"\n', True),
    ("VERSION=2.113.0", True),  # unquoted, no final newline
    ('VERSION="2.88.4"\n', False),
    ('VERSION="2.113.0+rev1"\n', False),
    ("VERSION_ID=2.113.0\n", False),  # only VERSION spares it
    ('VERSION=""\n', False),
])
def test_the_registry_check_spares_a_device_that_runs_one_of_the_versions_given(tmp_path, shell, os_release, skipped):
    """The preflight's probe skips the registry check (and says so) where /etc/os-release's VERSION is
    one of unless_versions (the target: a no-op pulls nothing); anywhere else it checks."""
    argv, stdin = scripts.probe("probe_registry").argv(enabled=True, scheme="http", unless_versions="v2.113.0 2.113.0",
                                                       registries=[{"name": "p", "registry": "127.0.0.1:9"}])
    fake = tmp_path / "os-release"
    fake.write_text(os_release)
    cmd = " ".join([shell] + [shlex.quote(part) for part in argv[1:]])
    proc = run_in_namespace(tmp_path, f"mount --bind {shlex.quote(str(fake))} /etc/os-release\nprintf '%s' {shlex.quote(stdin or '')} | {cmd}\n")
    assert proc.returncode == 0, proc.stderr
    extra = json.loads(json.loads(proc.stdout)["extra"])
    assert extra["skipped"] is skipped
    if skipped:
        assert extra["registries"] == []
    else:
        assert [r["name"] for r in extra["registries"]] == ["p"] and extra["registries"][0]["error"], extra


def test_the_registry_check_fails_when_it_cannot_make_a_temporary_file(tmp_path):
    argv, stdin = scripts.probe("probe_registry").argv(enabled=True, scheme="http", unless_versions="", registries=[{"name": "p", "registry": "127.0.0.1:9"}])
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "TMPDIR": str(tmp_path / "no-such-dir")})
    assert proc.returncode == 1 and "cannot create a temporary file for curl's error" in proc.stderr, proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_apply_never_renames_over_an_existing_file(tmp_path, shell):
    ops = [("copy", "/mnt/boot/bzImage", "/mnt/sysroot/inactive/resin-boot/bzImage"),
           ("put", "/mnt/boot/resinOS_uEnv.txt", "resin_root_part=3\nupgrade_available=1\n")]
    argv, stdin = scripts.load("apply").argv(ops=[list(op) for op in ops])
    text = argv[2].replace("set -u\n", "set -u\n" + NO_RENAME_OVER, 1)
    cmd = f"printf '%s' {shlex.quote(stdin or '')} | {shell} -c {shlex.quote(text)} osfleet"
    proc = run_in_namespace(tmp_path, cmd + SHOW)
    rc, result = files(proc.stdout)
    assert rc == 0, proc.stderr
    assert result["boot/bzImage"] == "new-kernel" and result["boot/resinOS_uEnv.txt"] == "resin_root_part=3|upgrade_available=1|"
    assert not [name for name in result if name.endswith(".osfleet-old.osfleet-tmp")]


# a balenaOS (hostapp) device: both partitions hold a hostapp; the inactive one's init (a stand-in
# for mobynit's -sysroot mode) mounts its layers at balena/overlay2/<id>/merged and prints the path
HOSTAPP = r"""
set -e
for p in active inactive; do
  P=/mnt/sysroot/$p; mkdir -p "$P/balena/overlay2/m1/diff/resin-boot/overlays" "$P/balena/volumes/v1/_data" "$P/hostapps/c1"
  ln -s ../../balena/volumes/v1/_data "$P/hostapps/c1/boot"; ln -s hostapps/c1 "$P/current"
done
rm -rf /mnt/sysroot/inactive/resin-boot
I=/mnt/sysroot/inactive
printf 'new-kernel-in-layers' > "$I/balena/overlay2/m1/diff/resin-boot/bzImage" && printf o > "$I/balena/overlay2/m1/diff/resin-boot/overlays/o.dtbo"
cat > "$I/balena/volumes/v1/_data/init" <<'EOF_INIT'
#!/bin/sh
[ "$1" = -sysroot ] || exit 2
m=$2/balena/overlay2/m1/merged
mkdir -p "$m" && mount --bind "$2/balena/overlay2/m1/diff" "$m" && mount -o remount,bind,ro "$m" && printf '%s' "$m"
EOF_INIT
chmod +x "$I/balena/volumes/v1/_data/init"
set +e
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_switch_probe_reads_the_inactive_hostapp_under_its_own_mount_and_unmounts_it(tmp_path, shell):
    body = HOSTAPP + probe_cmd(shell) + "\necho\ngrep -c merged /proc/mounts || true\n"
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    first, mounts = proc.stdout.strip().rsplit("\n", 1)
    raw, probe = switch_probe(first)
    assert probe.hostapp and probe.inactive_mount == "ok", raw["extra"]
    inactive = probe.payloads["inactive"]
    assert inactive.present and set(inactive.files) == {"bzImage", "overlays/o.dtbo"}
    assert inactive.files["bzImage"].sha256 == hashlib.sha256(b"new-kernel-in-layers").hexdigest()
    assert mounts == "0", "the probe left the hostapp mounted"


@pytest.mark.parametrize("shell", SHELLS)
def test_switch_probe_lists_no_hostapp_without_the_listing(tmp_path, shell):
    """Without want=files nothing is mounted (the probe of bootenv committed and of health)."""
    argv, _stdin = scripts.probe("probe_switch").argv(want="", variables="/mnt/state/rollback-health-variables",
                                                      marker="/mnt/state/osfleet-rollback", keepback="/mnt/state/osfleet/keepback-before.sha256")
    body = HOSTAPP + " ".join([shell] + [shlex.quote(a) for a in argv[1:]])
    body += "\necho\n[ -d /mnt/sysroot/inactive/balena/overlay2/m1/merged ] && echo mounted-once || echo never-mounted\n"
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    first, seen = proc.stdout.strip().rsplit("\n", 1)
    _raw, probe = switch_probe(first)
    assert probe.hostapp and probe.inactive_mount is None and seen == "never-mounted"


def keepback_record_step(record: str, patterns: object) -> str:
    """The lock step's act (scripts/lock_step.sh) that only records the keep-back files of ``patterns`` in ``record``
    (the lock and the watchdog left as they are)."""
    return script_cmd("sh", "lock_step", op="none", expect="", doc="{}", watchdog="none", run="", bound=0, interval=1, log="",
                      record=record, input={"texts": {}, "patterns": patterns})


def test_keepback_record_hashes_the_kept_back_files(tmp_path):
    """The lock step's act (scripts/lock_step.sh, the lock left as it is) on a balenaOS device records them."""
    record = "/mnt/state/osfleet/keepback-before.sha256"
    patterns = ["config.json", "config.txt", "system-connections/", "absent.txt"]
    step = keepback_record_step(record, patterns)
    body = ("mkdir -p /mnt/boot/system-connections && printf c > /mnt/boot/config.txt && printf n > '/mnt/boot/system-connections/my wifi'\n"
            + step + " | jq -r '.watchdog, .keepback'" + f"\ncat {record}\n")
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["none", "3"], proc.stdout
    from ansible_collections.osfleet.hup.plugins.plugin_utils.hooks import parse_record  # pylint: disable=import-outside-toplevel
    got = parse_record("\n".join(lines[2:]) + "\n")
    assert got == {"config.json": hashlib.sha256(b'{"uuid":"u"}').hexdigest(), "config.txt": hashlib.sha256(b"c").hexdigest(),
                   "system-connections/my wifi": hashlib.sha256(b"n").hexdigest()}


def test_keepback_record_takes_odd_patterns_as_they_are(tmp_path):
    """The patterns are read in one jq with the rest of the lock step's input: a name with quotes,
    spaces or $(...) is a file name, one with a line break or no string is left out."""
    record = "/mnt/state/osfleet/keepback-before.sha256"
    patterns = ["it's a file.txt", "$(touch x)", "two\nlines", 7, "", "config.json"]
    step = keepback_record_step(record, patterns)
    body = ("printf a > \"/mnt/boot/it's a file.txt\" && printf b > '/mnt/boot/$(touch x)' && printf c > '/mnt/boot/two'\n"
            + step + " | jq -r '.keepback'" + f"\ncat {record}\nls /mnt/boot\n")
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "3", proc.stdout
    from ansible_collections.osfleet.hup.plugins.plugin_utils.hooks import parse_record  # pylint: disable=import-outside-toplevel
    assert set(parse_record("\n".join(lines[1:4]) + "\n")) == {"it's a file.txt", "$(touch x)", "config.json"}
    assert "x" not in lines[4:]
    bad = keepback_record_step(record, None)
    proc = run_in_namespace(tmp_path, bad + "\n")
    assert proc.returncode == 1 and proc.stderr.strip().endswith("patterns: a JSON list of paths"), proc.stderr


#: files of the device probe with contents a command substitution changes (NUL bytes dropped, the
#: trailing newlines cut), multi-byte characters and long runs of newlines among them
ODD_FILES = {
    "/mnt/boot/extra_uEnv.txt": b"a\0b\n\n\n",
    "/mnt/state/osfleet-rollback": "é ünï \U0001F600\r\n\n".encode(),
    "/mnt/sysroot/active/.osfleet-release.json": b"\n\n\n",
    "/mnt/state/osfleet/hup.lock": b"",
    "/mnt/sysroot/active/etc/balena-supervisor/supervisor.conf": b"no newline",
    "/mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf": b"\0\0\n",
    "/mnt/sysroot/inactive/etc/os-release": b"\0VERSION=1\n\0\n",
    "/mnt/boot/grub/grubenv": b"\n" * 5000 + "x\u00e9".encode() + b"\n" * 3000,
    "/mnt/sysroot/inactive/.osfleet-release.json": b"x\n" * 20000,
}
ODD_KEYS = {"extra_uenv": "/mnt/boot/extra_uEnv.txt", "rollback_record": "/mnt/state/osfleet-rollback",
            "active_stamp": "/mnt/sysroot/active/.osfleet-release.json", "lock": "/mnt/state/osfleet/hup.lock",
            "shipped_supervisor": "/mnt/sysroot/active/etc/balena-supervisor/supervisor.conf",
            "running_supervisor": "/mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf",
            "inactive_os_release": "/mnt/sysroot/inactive/etc/os-release", "grubenv": "/mnt/boot/grub/grubenv",
            "inactive_stamp": "/mnt/sysroot/inactive/.osfleet-release.json"}


@pytest.mark.parametrize("shell", SHELLS)
def test_the_probe_reads_each_file_as_a_command_substitution_does(tmp_path, shell):
    data = tmp_path / "files"
    data.mkdir()
    body = ""
    for i, (path, content) in enumerate(ODD_FILES.items()):
        (data / str(i)).write_bytes(content)
        body += f"mkdir -p {shlex.quote(os.path.dirname(path))} && cp {shlex.quote(str(data / str(i)))} {shlex.quote(path)}\n"
    proc = run_in_namespace(tmp_path, body + probe_cmd(shell))
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(proc.stdout)
    for key, path in ODD_KEYS.items():
        assert raw[key] == ODD_FILES[path].replace(b"\0", b"").rstrip(b"\n").decode(), key
    assert raw["grubenv_path"] == "/mnt/boot/grub/grubenv"
    assert raw["uenv"] == "resin_root_part=2\nupgrade_available=0" and raw["bootcount"] == "bootcount=1"
    assert raw["watchdog_run"] == "" and raw["rollback_health_state"] == ""
    with open("/etc/os-release", "rb") as handle:
        assert raw["os_release"] == handle.read().replace(b"\0", b"").rstrip(b"\n").decode()
    assert raw["config_json"] == '{"uuid":"u"}'


#: a hostapp container's config (config.v2.json) for each case: the probe prints "<current link
#: target> <its Image>", "-" for the Image when it cannot tell
HOSTAPP_CONFIGS = [
    ('{"Image": "sha256:abc", "State": {}}', "sha256:abc"),
    ('{"State": {}}', "-"),
    ('{"Image": null}', "-"),
    ("{not json", "-"),
    (None, "-"),
    # over 64 KiB: read by osfleet_hostapp_of itself
    ('{"Image": "sha256:abc", "pad": "' + "x" * 70000 + '"}', "sha256:abc"),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("config", "image"), HOSTAPP_CONFIGS)
def test_the_probe_names_the_hostapp_of_each_root(tmp_path, shell, config, image):
    body = HOSTAPP
    for side, c in (("active", "0123abcd"), ("inactive", "4567ef01")):
        body += f"ln -sfn hostapps/{c} /mnt/sysroot/{side}/current\n"
        if config is not None:
            body += (f"mkdir -p /mnt/sysroot/{side}/balena/containers/{c} && "
                     f"printf '%s' {shlex.quote(config)} > /mnt/sysroot/{side}/balena/containers/{c}/config.v2.json\n")
    proc = run_in_namespace(tmp_path, body + probe_cmd(shell))
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(proc.stdout)
    assert raw["active_hostapp"] == f"hostapps/0123abcd {image}" and raw["inactive_hostapp"] == f"hostapps/4567ef01 {image}"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_probe_names_no_hostapp_where_there_is_none(tmp_path, shell):
    """A root without a balena data root or a current link holds no hostapp; a current link to a
    name that is no container id has no Image."""
    body = HOSTAPP + "rm -rf /mnt/sysroot/inactive/balena && ln -sfn hostapps/not-an-id /mnt/sysroot/active/current\n"
    proc = run_in_namespace(tmp_path, body + probe_cmd(shell))
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(proc.stdout)
    assert raw["active_hostapp"] == "hostapps/not-an-id -" and raw["inactive_hostapp"] == ""


#: the hostapp-update job directory of each case (scripts/hostapp_write.sh): its files, and whether
#: a live process holds its pid
HOSTAPP_JOBS = [
    ({"status": "0\n", "image": "reg/x@sha256:a\nmore\n", "flag": "-i\n", "started": "12.5\n", "log": "pulled\n\nwrote 'it' \u00e9\n"}, False),
    ({"status": "not a number\n", "started": "3\n", "log": "".join(f"line {i}\n" for i in range(60))}, False),
    ({"image": "x", "flag": "-f"}, True),
    ({"image": "x", "auth/config.json": "{}"}, False),
    ({}, False),
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("files", "alive"), HOSTAPP_JOBS)
def test_the_probe_tells_the_hostapp_job_as_the_wait_does(tmp_path, shell, files, alive):
    """The probe's hostapp_job (built in the probe's own jq) is the object osfleet_hostapp_wait 0
    probe prints, for a job that ended, one whose status is no number, one still running, one
    gone (its credentials removed) and an empty job directory."""
    job = "/run/osfleet/hostapp-update"
    body = f"mkdir -p /run/osfleet && mount -t tmpfs osfleet-run /run/osfleet && mkdir -p {job}/auth\n"
    for name, content in files.items():
        body += f"printf '%s' {shlex.quote(content)} > {job}/{name}\n"
    if alive:
        body += f"sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {job}/pid\n"
    wait = scripts.library().text_for("osfleet_hostapp_wait") + 'osfleet_hostapp_wait 0 probe\n'
    body += f"{probe_cmd(shell)}; echo; {shell} -c {shlex.quote(wait)}; ls -A {job}\n"
    if alive:
        body += f"kill \"$(cat {job}/pid)\"\n"
    proc = run_in_namespace(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    decoder = json.JSONDecoder()
    raw, end = decoder.raw_decode(proc.stdout)
    waited, end2 = decoder.raw_decode(proc.stdout, end + proc.stdout[end:].index("{"))
    listing = proc.stdout[end2:].split()
    probed = json.loads(raw["hostapp_job"])
    assert probed == waited and probed["how"] == "probe"
    assert probed["state"] == ("running" if alive else "done" if "status" in files else "gone")
    assert ("auth" in listing) == alive, "the credentials of a job that ended are removed"
    if "log" in files:
        assert probed["log"] == "".join(files["log"].splitlines(keepends=True)[-40:]).rstrip("\n")


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
@pytest.mark.parametrize("shell", SHELLS)
def test_the_registry_check_keeps_odd_names_as_they_are(tmp_path, shell):
    """The registries are read in one jq (shell assignments): each name comes back as jq -r printed
    it in a command substitution (its trailing line breaks cut), nothing of it runs."""
    odd = "it's $(touch /tmp/osfleet-x) `id` \\ \"q\" \u00e9\n\n"
    argv, stdin = scripts.probe("probe_registry").argv(enabled=True, scheme="http", unless_versions="",
                                                       registries=[{"name": odd, "registry": "127.0.0.1:9"}, {"name": "q", "registry": "127.0.0.1:9"}])
    cmd = " ".join([shell] + [shlex.quote(part) for part in argv[1:]])
    proc = run_in_namespace(tmp_path, f"mount -t tmpfs osfleet-tmp /tmp\nprintf '%s' {shlex.quote(stdin or '')} | {cmd}\nls -A /tmp\n")
    assert proc.returncode == 0, proc.stderr
    raw, end = json.JSONDecoder().raw_decode(proc.stdout)
    assert "osfleet-x" not in proc.stdout[end:].split()
    extra = json.loads(raw["extra"])
    assert [(r["name"], r["registry"]) for r in extra["registries"]] == [(odd.rstrip("\n"), "127.0.0.1:9"), ("q", "127.0.0.1:9")]
    assert all(r["error"] for r in extra["registries"]) and extra["skipped"] is False
