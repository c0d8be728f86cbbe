# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's own tests: device lifecycle through labctl, devices checked directly over SSH.

Each test that changes a device uses its own device of the shared lab (see conftest.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import LABCTL, LabHandle, labctl, unique_prefix

from osfleet_lab.device import BOOT_RE, attach_partitioned, detach, loop_backed_by, loop_partitions, loops_of
from osfleet_lab.lab import HOST_COMMANDS, find_supplies, pids_in_pidns, stray_processes
from osfleet_lab.util import LAB_DIR, proc_alive


def last_boot_root(text: str) -> str:
    boots = BOOT_RE.findall(text)
    assert boots, "no BOOT line on the console"
    return boots[-1][1]


def port_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# --- boot ------------------------------------------------------------------------------------

def test_devices_boot(lab: LabHandle) -> None:
    rows = json.loads(lab.labctl("status", "--json").stdout)
    assert [r["device"] for r in rows] == [d.name for d in lab.devices()]
    assert len(rows) == 4
    oldest = rows[0]["os_version"]
    for row in rows:
        assert row["running"] and row["power"] == "on", row
        assert row["root"] == row["booted"] == "resin-rootA", row
        assert row["os_version"] == oldest, row
        assert re.fullmatch(rf"{lab.prefix}-x86-\d\d", row["device"])

    inventory = yaml.safe_load(lab.inventory.read_text())
    group = inventory["all"]["children"][f"lab_{lab.prefix}"]
    hosts = group["children"]["genericx86_64_ext"]["hosts"]
    assert sorted(hosts) == [r["device"] for r in rows]
    assert Path(group["vars"]["hup_catalog"]).is_file()
    for row in rows:
        assert hosts[row["device"]]["ansible_port"] == row["port"]
        assert hosts[row["device"]]["lab_os_version"] == oldest

    for device in lab.devices():
        assert "OSFLEET-BOOT-OK" in device.console()
        assert last_boot_root(device.console()) == "resin-rootA"


def test_inventory_works_with_ansible(lab: LabHandle, tmp_path: Path) -> None:
    """ansible raw over the generated inventory reaches every device (no python needed)."""
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists():
        pytest.skip("ansible is not installed next to this python")
    proc = subprocess.run(
        [str(ansible), "-i", str(lab.inventory), f"lab_{lab.prefix}", "-m", "raw", "-a", "hostname",
         "-o"], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split(" | ")[0]: line for line in proc.stdout.splitlines() if " | " in line}
    for device in lab.devices():
        line = lines.get(device.name, "")
        assert " | CHANGED | rc=0 | (stdout) " in line, proc.stdout
        assert re.search(rf"(\) |\\n){re.escape(device.name)}\\r", line), line


def test_device_view(lab: LabHandle) -> None:
    device = lab.devices()[0]
    mounts = {line.split()[1]: line.split() for line in device.check("cat /proc/mounts").splitlines()}
    root_dev = device.check("readlink -f /dev/disk/by-partlabel/resin-rootA").strip()
    other_dev = device.check("readlink -f /dev/disk/by-partlabel/resin-rootB").strip()
    assert mounts["/"][0] == root_dev and mounts["/"][3].startswith("ro"), mounts["/"]
    assert mounts["/mnt/sysroot/active"][0] == root_dev and mounts["/mnt/sysroot/active"][3].startswith("ro")
    assert mounts["/mnt/sysroot/inactive"][0] == other_dev and mounts["/mnt/sysroot/inactive"][3].startswith("rw")
    for point, label in (("/mnt/boot", "resin-boot"), ("/mnt/state", "resin-state"),
                         ("/mnt/data", "resin-data")):
        node = device.check(f"readlink -f /dev/disk/by-label/{label}").strip()
        assert mounts[point][0] == node, (point, mounts[point])
    assert device.check("hostname").strip() == device.name
    assert f"root={root_dev}" in device.check("cat /proc/cmdline")
    # only this device's disk in its /dev
    loops = device.check("ls /dev | grep '^loop' || true").split()
    disk = re.sub(r"p\d+$", "", root_dev.rsplit("/", 1)[1])
    assert loops and all(re.fullmatch(rf"{disk}(p[1-5])?", n) for n in loops), loops
    stamp = json.loads(device.check("cat /.osfleet-release.json"))
    catalog = json.loads((lab.dir / "catalog.json").read_text())
    digests = {(r["device_type"], r["version"]): r["digest"] for r in catalog["releases"]}
    assert stamp["source"] == "provision"
    assert stamp["digest"] == digests[(stamp["device_type"], stamp["version"])]
    config = json.loads(device.check("cat /mnt/boot/config.json"))
    assert config["hostname"] == device.name and config["developmentMode"] is False
    # root's key as balenaOS has it in config.json (a fresh state partition takes it from there)
    authorized = device.check("cat /mnt/state/ssh/authorized_keys").split()
    assert [k.split()[:2] for k in config["os"]["sshKeys"]] == [authorized[:2]]
    assert f"osfleet_lab_ssh_port={device.port}" in device.check("cat /proc/cmdline")
    env = device.check("cat /mnt/boot/resinOS_uEnv.txt")
    assert "resin_root_part=2" in env and "upgrade_available=0" in env
    assert device.check("cat /mnt/state/lab/device.env").count(f"LAB_SSH_PORT={device.port}") == 1


def test_device_capabilities(lab: LabHandle) -> None:
    """No clock, module or raw I/O capability (nor net_admin in the host netns); sys_boot stays."""
    device = lab.devices()[0]
    bounding = int(device.check("awk '/^CapBnd/ {print $2}' /proc/1/status"), 16)
    for cap in (25, 16, 17, 12):  # sys_time, sys_module, sys_rawio, net_admin
        assert not bounding & (1 << cap), f"capability {cap} not dropped"
    assert bounding & (1 << 22), "sys_boot must stay (reboot(2) ends only the namespace)"


def test_raw_command_and_no_python(lab: LabHandle) -> None:
    device = lab.devices()[0]
    assert device.run("echo hello; exit 3")[:2] == (3, "hello\n")
    assert device.run("command -v python3 || command -v python || ls /usr/bin/python*")[0] != 0
    # labctl exec passes the exit status through; several arguments are one argv
    proc = lab.labctl("exec", device.name, "--", "sh", "-c", "echo out; exit 5", check=False)
    assert (proc.returncode, proc.stdout) == (5, "out\n")
    proc = lab.labctl("exec", device.name, "--", "echo $((6*7))")
    assert proc.stdout == "42\n"


def test_console_and_services(lab: LabHandle) -> None:
    device = lab.devices()[0]
    assert "BOOT 1 root=resin-rootA" in lab.labctl("console", device.name).stdout
    services = json.loads(lab.labctl("services").stdout)
    assert services, "no service endpoints"


# --- boot selection ---------------------------------------------------------------------------

def test_reboot_boots_root_named_by_env(lab: LabHandle) -> None:
    device = lab.devices()[1]
    device.check("tar -C /mnt/sysroot/active -cf - . | tar -C /mnt/sysroot/inactive -xf - && sync")
    device.check("printf 'resin_root_part=3\\nupgrade_available=0\\n' > /mnt/boot/resinOS_uEnv.txt"
                 " && sync")
    old = device.boot_id()
    t0 = time.monotonic()
    new = lab.labctl("reboot", device.name).stdout.strip()
    print(f"reboot took {time.monotonic() - t0:.1f}s")
    assert new != old and device.boot_id() == new
    assert device.booted_root() == "resin-rootB"
    assert last_boot_root(device.console()) == "resin-rootB"
    # the other root is now rootA, read-write
    inactive = device.check("awk '$2==\"/mnt/sysroot/inactive\" {print $1}' /proc/mounts").strip()
    assert inactive == device.check("readlink -f /dev/disk/by-partlabel/resin-rootA").strip()


def test_failing_root_falls_back(lab: LabHandle) -> None:
    device = lab.devices()[2]
    # rootB: a copy of rootA without /sbin/init, then armed like an update does
    device.check("rm -rf /mnt/sysroot/inactive/* && tar -C /mnt/sysroot/active"
                 " --exclude=./sbin/init -cf - . | tar -C /mnt/sysroot/inactive -xf - &&"
                 " test ! -e /mnt/sysroot/inactive/sbin/init && sync")
    device.check("printf 'resin_root_part=3\\nupgrade_available=1\\n' > /mnt/boot/resinOS_uEnv.txt"
                 " && rm -f /mnt/boot/bootcount.env && sync")
    before = len(device.console())
    old = device.boot_id()
    lab.labctl("reboot", device.name)
    console = device.console()[before:]
    assert console.count("BOOTFAIL resin-rootB has no executable /sbin/init") == 3, console
    assert "ALTBOOT bootcount=4 os_bc_lim=3 resin_root_part=3 -> 2" in console, console
    assert [b[1] for b in BOOT_RE.findall(console)] == ["resin-rootB"] * 3 + ["resin-rootA"]
    assert device.boot_id() != old
    assert device.booted_root() == "resin-rootA"
    # u-boot swaps in memory only: the env still names rootB, the count went on
    assert "resin_root_part=3" in device.check("cat /mnt/boot/resinOS_uEnv.txt")
    assert device.check("cat /mnt/boot/bootcount.env").strip() == "bootcount=4"


# --- power -----------------------------------------------------------------------------------

def test_powercut_then_poweron_keeps_data(lab: LabHandle) -> None:
    device = lab.devices()[3]
    sums = device.check(
        "mkdir -p /mnt/data/labtest && cd /mnt/data/labtest && for i in 1 2 3; do"
        " dd if=/dev/urandom of=f$i bs=64k count=16 2>/dev/null; done && sync && sha256sum f1 f2 f3")
    old = device.boot_id()
    lab.labctl("powercut", device.name)
    assert port_refused(device.port)
    rows = {r["device"]: r for r in json.loads(lab.labctl("status", "--json").stdout)}
    assert rows[device.name]["power"] == "off" and not rows[device.name]["running"]
    lab.labctl("poweron", device.name)
    assert device.boot_id() != old
    assert device.check("cd /mnt/data/labtest && sha256sum f1 f2 f3") == sums
    console = device.console()
    assert console.index("POWER CUT") < console.index("POWER ON") < console.rindex("OSFLEET-BOOT-OK")


def test_reboot_f_and_poweroff_exit_codes(lab: LabHandle) -> None:
    """reboot -f (reboot(2) in the PID namespace: SIGHUP, 129) reboots; poweroff switches off."""
    device = lab.devices()[3]
    old = device.boot_id()
    before = len(device.console())
    device.run("setsid sh -c 'sleep 0.3; reboot -f' >/dev/null 2>&1 </dev/null & sleep 0.1")
    deadline = time.monotonic() + 60
    while "OSFLEET-BOOT-OK" not in device.console()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "REBOOT (exit 129)" in device.console()[before:]
    assert device.boot_id() != old
    before = len(device.console())
    device.run("setsid sh -c 'sleep 0.3; poweroff' >/dev/null 2>&1 </dev/null & sleep 0.1")
    deadline = time.monotonic() + 30
    while "POWER OFF" not in device.console()[before:] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "POWER OFF (exit 101)" in device.console()[before:]
    power = json.loads((lab.dir / "devices" / device.name / "power.state").read_text())
    assert power["state"] == "off" and port_refused(device.port)
    lab.labctl("poweron", device.name)
    assert device.check("echo back") == "back\n"


def test_killed_supply_takes_device_down_and_poweron_revives(lab_factory) -> None:
    """SIGKILL of the power supply kills the whole device (PDEATHSIG, --kill-child); after the
    disk was detached too (as after a host reboot) poweron attaches it again and boots."""
    handle = lab_factory(1)
    device = handle.devices()[0]
    record = handle.state()["devices"][device.name]
    power = json.loads((handle.dir / "devices" / device.name / "power.state").read_text())
    os.kill(record["supply"]["pid"], signal.SIGKILL)  # the supply labctl started for this test
    deadline = time.monotonic() + 10
    while pids_in_pidns(power["pidns"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids_in_pidns(power["pidns"]) and port_refused(device.port)
    detach(record["loop"], Path(record["image"]))  # partx -d + losetup -d, retried while busy
    assert not loops_of(Path(record["image"]))
    rows = json.loads(handle.labctl("status", "--json").stdout)
    assert rows[0]["power"] == "no-supply" and not rows[0]["running"]
    handle.labctl("poweron", device.name)
    assert device.check("echo revived") == "revived\n"


def gpt_image(path: Path, parts: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate((parts * 2 + 2) << 20)
    table = "label: gpt\n" + "".join(f"size=2MiB, name=\"p{i}\"\n" for i in range(parts))
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(path)], input=table,
                   text=True, check=True, capture_output=True)
    return path


def test_free_loop_with_stale_partitions_is_cleared(tmp_path: Path, capsys) -> None:
    """Issue 7: a loop device detached while it still had partitions (a crash before partx -d,
    or a detach while busy) is free but keeps them, and `partx -a` on it failed with "error adding
    partitions", so `labctl up` failed. The lab now removes the stale partitions first."""
    scratch = gpt_image(tmp_path / "scratch.img", 2)
    stale = subprocess.run(["losetup", "-f", "--show", str(scratch)], capture_output=True,
                           text=True, check=True).stdout.strip()
    try:
        subprocess.run(["partx", "-a", stale], check=True, capture_output=True)
        subprocess.run(["losetup", "-d", stale], check=True, capture_output=True)
        name = Path(stale).name
        assert loop_partitions(stale) == [f"{name}p1", f"{name}p2"]  # free, with stale partitions
        assert not loop_backed_by(stale, scratch)
        disk = gpt_image(tmp_path / "disk.img", 3)
        try:
            loop = attach_partitioned(disk, 3)
            lname = Path(loop).name
            assert loop_partitions(loop) == [f"{lname}p1", f"{lname}p2", f"{lname}p3"]
            assert all(Path(f"{loop}p{i}").exists() for i in (1, 2, 3))
            if loop == stale:  # the usual case: the lowest free loop device is the stale one
                assert f"{stale} had stale partitions ({name}p1 {name}p2)" in capsys.readouterr().err
            else:  # another session took it meanwhile: it is that session's now
                assert loop_partitions(stale) == [] or not loop_backed_by(stale, disk)
        finally:
            for attached in loops_of(disk):
                detach(attached, disk)
        assert not loops_of(disk)
    finally:
        backing = Path(f"/sys/block/{Path(stale).name}/loop/backing_file")
        if backing.exists() and backing.read_text().strip() == str(scratch):
            subprocess.run(["partx", "-d", stale], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", stale], check=False, capture_output=True)
        elif not backing.exists() and loop_partitions(stale):
            subprocess.run(["partx", "-d", stale], check=False, capture_output=True)


# --- lifecycle -------------------------------------------------------------------------------

def leftovers(handle: LabHandle, state: dict, power: dict[str, dict]) -> list[str]:
    """Everything of a lab still present on the host after down."""
    found = []
    if handle.dir.exists():
        found.append(f"{handle.dir} exists")
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    found += [f"loop: {line}" for line in losetup.splitlines() if str(handle.dir) in line]
    loops = {r["loop"] for r in state["devices"].values() if r.get("loop")}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, point = line.split()[:2]
        if str(handle.dir) in point or any(source.startswith(f"{lp}p") for lp in loops):
            found.append(f"mount: {line}")
    for name, record in state["devices"].items():
        supply = record.get("supply") or {}
        if proc_alive(supply.get("pid"), supply.get("start")):
            found.append(f"{name}: supply {supply['pid']} alive")
        ps = power[name]
        if proc_alive(ps.get("unshare_pid"), ps.get("unshare_start")):
            found.append(f"{name}: unshare {ps['unshare_pid']} alive")
        if ps.get("pidns") and pids_in_pidns(int(ps["pidns"])):
            found.append(f"{name}: processes left in its PID namespace")
        if find_supplies(handle.dir / "devices" / name / "supply.json"):
            found.append(f"{name}: an unrecorded supply runs")
    return found


def snapshot(handle: LabHandle) -> tuple[dict, dict[str, dict]]:
    state = handle.state()
    power = {name: json.loads((handle.dir / "devices" / name / "power.state").read_text())
             for name in state["devices"]}
    return state, power


def test_two_labs_coexist_and_down_leaves_nothing(lab: LabHandle, lab_factory) -> None:
    t0 = time.monotonic()
    other = lab_factory(2)
    print(f"up 2 devices took {time.monotonic() - t0:.1f}s")
    mine = {d.name: d.port for d in lab.devices()}
    theirs = {d.name: d.port for d in other.devices()}
    assert not set(mine) & set(theirs) and not set(mine.values()) & set(theirs.values())
    for device in other.devices():
        assert device.check("hostname").strip() == device.name
    # up on an existing prefix adds devices, numbered on
    more = labctl("up", "--devices", "1", "--prefix", other.prefix)
    assert Path(more.stdout.strip().splitlines()[-1]) == other.inventory
    assert [d.name[-2:] for d in other.devices()] == ["01", "02", "03"]
    hosts = yaml.safe_load(other.inventory.read_text())["all"]["children"][f"lab_{other.prefix}"]
    assert len(hosts["children"]["genericx86_64_ext"]["hosts"]) == 3
    state, power = snapshot(other)
    assert all(p.get("pidns") for p in power.values())
    t0 = time.monotonic()
    other.labctl("down")
    print(f"down 3 devices took {time.monotonic() - t0:.1f}s")
    assert leftovers(other, state, power) == []
    assert other.labctl("down").returncode == 0  # idempotent
    # the first lab is untouched
    assert lab.devices()[0].check("echo alive") == "alive\n"


def _reached(handle: LabHandle, point: str) -> bool:
    """Has a running ``labctl up`` reached ``point``? (read from what it writes)"""
    if point == "services":  # a service process runs, no device is allocated yet
        return bool(stray_processes(handle.dir))
    try:
        devices = handle.state()["devices"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False
    key = {"loop": "loop", "supply": "supply"}[point]
    return any((r.get(key) or {}) if key == "supply" else r.get(key) for r in devices.values())


@pytest.mark.parametrize("point", ["services", "loop", "supply"])
def test_down_after_crash_halfway(point: str) -> None:
    """labctl up SIGKILLed at some point: down still removes everything."""
    prefix = unique_prefix("c")
    handle = LabHandle(prefix, LAB_DIR / prefix / "inventory.yml")
    proc = subprocess.Popen([str(LABCTL), "up", "--devices", "3", "--prefix", prefix],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not _reached(handle, point):
            time.sleep(0.005)
        assert proc.poll() is None, f"labctl up finished before it reached {point}"
        os.kill(proc.pid, signal.SIGKILL)  # the labctl we started, by PID
        proc.wait()
        state = handle.state() if (handle.dir / "state.json").exists() else {"devices": {}}
        power = {name: json.loads(p.read_text()) if (p := handle.dir / "devices" / name /
                 "power.state").exists() else {} for name in state["devices"]}
        if point == "services":
            assert not state["devices"] and stray_processes(handle.dir)
        labctl("down", "--prefix", prefix)
        assert leftovers(handle, state, power) == []
        assert stray_processes(handle.dir) == []
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        labctl("down", "--prefix", prefix, check=False)


def test_netns_devices(lab_factory) -> None:
    """--netns: own network namespace, SSH and the lab's services through loopback tunnels."""
    handle = lab_factory(1, "--netns")
    device = handle.devices()[0]
    links = device.check("ip -o link show")
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    assert "LAB_SSH_PORT=22222" in device.check("cat /mnt/state/lab/device.env")
    services = json.loads(handle.labctl("services").stdout)
    catalog = json.loads((handle.dir / "catalog.json").read_text())
    assert json.loads(device.check(f"curl -fsS {services['http']}/catalog.json")) == catalog
    registry = catalog["registries"]["primary"]
    assert "repositories" in json.loads(device.check(f"curl -fsS http://{registry}/v2/_catalog"))
    old = device.boot_id()
    assert handle.labctl("reboot", device.name).stdout.strip() != old
    assert device.check("echo ok") == "ok\n"


# --- bad input -------------------------------------------------------------------------------

BAD_UP = [
    (["up", "--devices", "0"], "between 1 and 50"),
    (["up", "--devices", "51"], "between 1 and 50"),
    (["up", "--devices", "two"], "invalid int"),
    (["up", "--devices", "1", "--device-type", "no-such-type"], "unknown device type"),
    (["up", "--devices", "1", "--os", "0.0.1"], "unknown OS version"),
    (["up", "--devices", "1", "--profile", "nosuch"], "invalid choice: 'nosuch'"),
]


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("args", "needle"), BAD_UP, ids=[" ".join(case[0]) for case in BAD_UP])
def test_bad_up_input(args: list[str], needle: str) -> None:
    prefix = unique_prefix("b")
    assert_one_line_exit_2(labctl(*args, "--prefix", prefix, check=False), needle)
    assert not (LAB_DIR / prefix).exists()


def test_bad_prefix_and_names(lab: LabHandle) -> None:
    assert_one_line_exit_2(labctl("up", "--devices", "1", "--prefix", "Bad_Prefix", check=False),
                           "bad prefix")
    assert_one_line_exit_2(lab.labctl("exec", "nosuch", "--", "true", check=False), "nosuch")
    assert_one_line_exit_2(lab.labctl("reboot", "nosuch", check=False), "nosuch")
    assert_one_line_exit_2(labctl("poweron", "x", "--prefix", unique_prefix("n"), check=False),
                           "no lab")


def test_not_root_and_missing_feature(tmp_path: Path) -> None:
    prefix = unique_prefix("r")
    # an unprivileged user may not be able to enter the checkout (e.g. below a 0700 directory):
    # run a copy of labctl from a directory everyone can read, with the system python3
    public = Path(tempfile.mkdtemp(prefix="osfleet-labctl-"))
    try:
        public.chmod(0o755)
        shutil.copytree(LABCTL.parent / "osfleet_lab", public / "osfleet_lab",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(LABCTL, public / "labctl")
        for path in (public, *public.rglob("*")):
            path.chmod(0o755 if path.is_dir() or path.name == "labctl" else 0o644)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               str(public / "labctl"), "up", "--devices", "1", "--prefix", prefix],
                              capture_output=True, text=True, check=False, cwd="/",
                              env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        shutil.rmtree(public)
    assert_one_line_exit_2(proc, "root")
    # a host without unshare: PATH holds every other command labctl needs
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for cmd in {*HOST_COMMANDS, "python3", "sh", "env", "dirname"} - {"unshare"}:
        if found := shutil.which(cmd):
            (bin_dir / cmd).symlink_to(found)
    proc = subprocess.run([str(LABCTL), "up", "--devices", "1", "--prefix", prefix],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": str(bin_dir)})
    assert_one_line_exit_2(proc, "unshare")
    assert not (LAB_DIR / prefix).exists()


# --- the SSH link ----------------------------------------------------------------------------

def link_rules() -> str:
    return subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True, check=True).stdout


def test_link_down_cuts_ssh_and_the_device_keeps_running(lab_factory) -> None:
    """labctl link NAME down drops the SSH link like a cut cable (no refusal, no reset): new
    connections time out, an open session hangs until ssh's keepalive gives up; the device and what
    it runs go on (same boot, a counter it runs keeps counting); link up brings SSH back."""
    handle = lab_factory(1)
    (device,) = handle.devices()
    boot = device.boot_id()
    device.check("setsid sh -c 'i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo $i > /run/tick; sleep 0.2; done'"
                 " >/dev/null 2>&1 </dev/null &")
    ssh = ["ssh", "-p", str(device.port), "-i", str(handle.dir / "id_ed25519"), "-o", "BatchMode=yes",
           "-o", f"UserKnownHostsFile={handle.dir / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
           "-o", "ConnectTimeout=3", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=3", "root@127.0.0.1"]
    session = subprocess.Popen([*ssh, "echo started; sleep 30; echo finished"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert session.stdout is not None and session.stdout.readline() == "started\n"
        tick = int(device.check("cat /run/tick"))
        handle.labctl("link", device.name, "down")
        assert f"osfleet-lab {handle.prefix}/{device.name}" in link_rules()
        out, err = session.communicate(timeout=60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert session.returncode == 255 and "finished" not in out, (out, err)
    probe = subprocess.run([*ssh, "true"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert probe.returncode == 255 and "timed out" in probe.stderr, probe.stderr
    rows = json.loads(handle.labctl("status", "--json").stdout)
    assert (rows[0]["link"], rows[0]["power"], rows[0]["running"]) == ("down", "on", False), rows
    handle.labctl("link", device.name, "down")  # twice: no second pair of rules
    assert link_rules().count(f"osfleet-lab {handle.prefix}/{device.name}") == 2

    handle.labctl("link", device.name, "up")
    assert f"osfleet-lab {handle.prefix}/{device.name}" not in link_rules()
    assert device.boot_id() == boot, "the device ran on (no reboot) while its link was down"
    assert int(device.check("cat /run/tick")) > tick
    rows = json.loads(handle.labctl("status", "--json").stdout)
    assert (rows[0]["link"], rows[0]["running"]) == ("up", True), rows
    assert "POWER" not in device.console().split("OSFLEET-BOOT-OK")[-1]


def test_link_bad_input_and_down_removes_the_rules(lab_factory) -> None:
    handle = lab_factory(1)
    (device,) = handle.devices()
    proc = handle.labctl("link", device.name, "sideways", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = handle.labctl("link", "no-such-device", "down", check=False)
    assert proc.returncode == 2 and "no device 'no-such-device'" in proc.stderr
    assert f"osfleet-lab {handle.prefix}/" not in link_rules()
    handle.labctl("link", device.name, "down")
    assert f"osfleet-lab {handle.prefix}/{device.name}" in link_rules()
    handle.labctl("down")
    assert f"osfleet-lab {handle.prefix}/{device.name}" not in link_rules()


#: partition sizes (MiB) of the lab's jetson-xavier layouts (releases.json): 5.1.0 is l4t-r32, 6.1.0 l4t-r35
L4T_R32 = [40, 300, 300, 20, 256]
L4T_R35 = [96, 320, 320, 20, 256]
#: the device's partition sizes in MiB, in partition order, as its kernel sees them
PART_SIZES = ('d=$(readlink -f /dev/disk/by-partlabel/resin-boot); d=${d%p*}; d=${d#/dev/};'
              ' for p in /sys/class/block/"$d"p*; do echo "$(( $(cat "$p/size") / 2048 ))"; done')


def test_reflash_writes_a_new_layout_and_brings_an_unbootable_device_back(lab_factory) -> None:
    """The advanced update's lab side: a jetson-xavier's disk has room for its largest layout, the
    firmware reads the partition table at each power on (a whole-disk write gets its new layout
    booted), a device whose disk lost its partition table does not boot, and ``labctl reflash``
    writes a fresh disk of a release (its own layout, the device's SSH identity) and boots it."""
    handle = lab_factory(1, "--device-type", "jetson-xavier", "--os", "5.1.0")
    device = handle.devices()[0]
    record = handle.state()["devices"][device.name]
    image = Path(record["image"])
    assert image.stat().st_size >= (sum(L4T_R35) + 2) << 20, "the disk has room for the l4t-r35 layout"
    assert [int(x) for x in device.check(PART_SIZES).split()] == L4T_R32
    device.check("echo before > /mnt/data/osfleet-reflash.txt && sync")

    assert handle.labctl("reflash", device.name, "--os", "6.1.0").stdout.strip() == "6.1.0"
    assert 'VERSION="6.1.0"' in device.check("cat /etc/os-release")
    assert [int(x) for x in device.check(PART_SIZES).split()] == L4T_R35, "the new layout is what the device booted"
    assert device.booted_root() == "resin-rootA"
    assert device.check("ls /mnt/data/osfleet-reflash.txt 2>/dev/null; true") == "", "a fresh data partition"
    assert "FIRMWARE partition table re-read: 5 partitions" in device.console()

    # a drill that wiped the partition table (both GPT headers): the device does not boot
    handle.labctl("powercut", device.name)
    with open(image, "r+b") as fh:
        fh.write(bytes(34 * 512))
        fh.seek(image.stat().st_size - 33 * 512)
        fh.write(bytes(33 * 512))
    proc = handle.labctl("poweron", device.name, check=False)
    assert proc.returncode != 0 and "did not boot" in proc.stderr, proc.stderr
    assert "FIRMWARE no partition table on the disk" in device.console()
    # reflash (default: the version the device was made with now, 6.1.0) brings it back
    assert handle.labctl("reflash", device.name).stdout.strip() == "6.1.0"
    assert device.check("echo back") == "back\n"
    assert [int(x) for x in device.check(PART_SIZES).split()] == L4T_R35
