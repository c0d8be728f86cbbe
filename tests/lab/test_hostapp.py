# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The balenaos device profile on real lab devices: the hostapp on-disk shape, the mobynit-style
boot, hostapp-update (-i, -f, delta, twice, a failing hook, -x), the balena engine stand-in, the
hooks, rollback-health and rollback-altboot through the hostapp paths, and power cuts.

One lab of balenaos devices; every scenario runs on its own device, all of them at once from the
first test on (like tests/integration/test_faults.py), and each test asserts what its scenario
saw. A scenario stops at the first thing that does not work (the test shows where).
"""
from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from conftest import Device, LabHandle, bring_up, labctl, unique_prefix, wait_for

from osfleet_lab import releases
from osfleet_lab.util import CACHE_DIR

HOST_ENGINE = "DOCKER_HOST=unix:///var/run/balena-host.sock"
SCENARIOS = ("view", "registry", "archive", "health", "bootfault", "hookfail", "cut_create",
             "cut_hooks")
REBOOT_CMD = "setsid sh -c 'sleep 1; reboot' >/dev/null 2>&1 </dev/null & sleep 0.5"
#: user data on /mnt/data that every failure must leave intact
USER_DATA_SH = ("mkdir -p /mnt/data/labtest && cd /mnt/data/labtest && for i in 1 2 3; do"
                " dd if=/dev/urandom of=f$i bs=64k count=8 2>/dev/null; done && sync &&"
                " sha256sum f1 f2 f3")
KEEP_BACK = ("config.json", "config.txt", "extra_uEnv.txt")
#: blocks the balena command named by the device's /tmp/shim/point (a power cut lands there)
SHIM_SH = r"""
mkdir -p /tmp/shim && printf '%s\n' "$1" >/tmp/shim/point && cat >/tmp/shim/balena <<'EOF'
#!/bin/sh
if [ "$1" = "$(cat /tmp/shim/point)" ]; then touch /tmp/shim/reached; sleep 3600; fi
exec /usr/bin/balena "$@"
EOF
chmod +x /tmp/shim/balena
"""


# --- helpers ---------------------------------------------------------------------------------------

def catalog_of(lab: LabHandle) -> dict[str, Any]:
    return json.loads((lab.dir / "catalog.json").read_text())


def release(catalog: dict[str, Any], version: str) -> dict[str, Any]:
    return next(r for r in catalog["releases"]
                if (r["device_type"], r["version"]) == ("genericx86-64-ext", version))


def layer_count(version: str) -> int:
    """How many layers the release's image has (the build's record)."""
    return len(releases.ensure_built(CACHE_DIR).release_info("genericx86-64-ext", version)["layers"])


def full_ref(catalog: dict[str, Any], version: str) -> str:
    rel = release(catalog, version)
    return f"{catalog['registries']['primary']}/{rel['repository']}@{rel['digest']}"


def delta_ref(catalog: dict[str, Any], frm: str, to: str) -> str:
    delta = next(d for d in release(catalog, to)["deltas"] if d["from"] == frm)
    return f"{catalog['registries']['primary']}/{delta['repository']}@{delta['digest']}"


def wait_console(dev: Device, since: int, *marks: str, timeout: float) -> str:
    """The console after offset ``since`` once it shows ``marks`` in this order (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = dev.console()[since:]
        pos = 0
        for mark in marks:
            pos = text.find(mark, pos)
            if pos < 0:
                break
            pos += len(mark)
        else:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{dev.name}: the console never showed {marks}:\n{dev.console()[since:][-2500:]}")


STATE_SH = r"""
. /usr/lib/osfleet/functions.sh
echo "root=$(booted_root_label)"
echo "version=$(kv_get /etc/os-release VERSION)"
echo "fstype=$(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts)"
echo "env=$(tr '\n' ' ' </mnt/boot/resinOS_uEnv.txt)"
echo "state=$(cd /mnt/state && ls -d rollback-* 2>/dev/null | tr '\n' ' ')"
echo "bootfiles=$(cat /mnt/boot/os-release)"
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "health=$(cat /run/rollback-health.state 2>/dev/null)"
cid=$(basename "$(readlink /mnt/sysroot/inactive/current 2>/dev/null)" 2>/dev/null)
echo "inactive_cid=$cid"
echo "inactive_image=$(jq -r .Image /mnt/sysroot/inactive/balena/containers/$cid/config.v2.json 2>/dev/null)"
echo "active_image=$(jq -r .Image /mnt/sysroot/active/balena/containers/$(basename "$(readlink /mnt/sysroot/active/current)")/config.v2.json 2>/dev/null)"
echo "counter=$(cat /mnt/sysroot/inactive/counter 2>/dev/null)"
"""


#: what a failed pull or load may leave in the inactive engine: images, layer dirs, tmp entries
LEFTOVERS_SH = (f"{HOST_ENGINE} balena images -q | wc -l; ls /mnt/sysroot/inactive/balena/overlay2 |"
                " awk '$0 != \"l\" { n++ } END { print n + 0 }'; ls /mnt/sysroot/inactive/balena/tmp | wc -l")


def state(dev: Device) -> dict[str, str]:
    return dict(line.split("=", 1) for line in dev.check(STATE_SH).splitlines() if "=" in line)


def keep_back_sums(dev: Device) -> str:
    return dev.check("cd /mnt/boot && sha256sum " + " ".join(KEEP_BACK))


def hostapp_update(dev: Device, *args: str, timeout: float = 300) -> tuple[int, str]:
    rc, out, err = dev.run(f"hostapp-update {shlex.join(args)} 2>&1", timeout=timeout)
    return rc, out + err


def reboot(lab: LabHandle, dev: Device) -> None:
    lab.labctl("reboot", dev.name)


def hook_log(dev: Device) -> list[str]:
    return dev.check("cat /mnt/data/balenahup/hostapp-update-hooks.log 2>/dev/null; true").splitlines()


# --- the scenarios -----------------------------------------------------------------------------------

def scenario_view(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
    """A freshly provisioned device: what it booted and what its partitions hold."""
    out: dict[str, Any] = {"state": state(dev)}
    out["mounts"] = {line.split()[1]: line.split() for line in dev.check("cat /proc/mounts").splitlines()}
    out["parts"] = {label: dev.check(f"readlink -f /dev/disk/by-partlabel/{label}").strip()
                    for label in ("resin-rootA", "resin-rootB")}
    out["layout"] = dev.check(r"""
        cd /mnt/sysroot/active
        echo "current=$(readlink current)"; echo "boot=$(readlink boot)"; echo "init=$(readlink sbin/init)"
        echo "counter=$(cat counter)"; echo "machine_id=$(wc -c <etc/machine-id)"
        for d in dev etc balena hostapps mnt/state proc run sbin sys tmp; do [ -d "$d" ] || echo "missing=$d"; done
        cid=$(basename "$(readlink current)")
        echo "hostapps=$(ls hostapps | tr '\n' ' ')"
        echo "hostapp_boot=$(readlink hostapps/$cid/boot)"
        jq -c '{ID, Image, Driver, Dead: .State.Dead, Removing: .State.RemovalInProgress,
                ConfigImage: .Config.Image, MountPoints}' balena/containers/$cid/config.v2.json | sed 's/^/config=/'
        echo "containers=$(ls balena/containers | wc -l)"
        mid=$(cat balena/image/overlay2/layerdb/mounts/$cid/mount-id)
        echo "mount_id=$mid"; echo "init_id=$(cat balena/image/overlay2/layerdb/mounts/$cid/init-id)"
        echo "lower=$(cat balena/overlay2/$mid/lower)"
        for l in $(cat balena/overlay2/$mid/lower | tr ':' ' '); do echo "link=$l $(readlink balena/overlay2/$l)"; done
        echo "sizes=$(for f in balena/image/overlay2/layerdb/sha256/*/size; do cat "$f"; echo; done | awk '{ s += $1 } END { print s }')"
        for f in balena/image/overlay2/imagedb/content/sha256/*; do echo "imagedb=${f##*/} $(sha256sum <"$f" | cut -d' ' -f1)"; done
        echo "repos=$(jq -c . balena/image/overlay2/repositories.json)"
        echo "kernel=$(sha256sum <boot/bzImage | cut -d' ' -f1) $(sha256sum </resin-boot/bzImage | cut -d' ' -f1)"
        echo "os_release=$(find /mnt/sysroot/active/balena/overlay2 -path '*/diff/etc/os-release' | wc -l)"
        echo "stamp=$(cat .osfleet-release.json)"
    """)
    # the partition's own init mounts its hostapp (as hostapp-update and rollback-health use it)
    out["sysroot_mount"] = dev.check(
        "m=$(/mnt/sysroot/active/current/boot/init -sysroot /mnt/sysroot/active) && echo \"$m\" &&"
        " grep '^VERSION=' \"$m/etc/os-release\" && umount \"$m\"")
    out["engine"] = dev.check(f"export {HOST_ENGINE}; balena images -q | wc -l; balena ps -aq | wc -l")
    out["status"] = json.loads(lab.labctl("status", "--json").stdout)
    return out


def scenario_registry(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
    """-i by digest twice, reboot; a delta whose base was tampered with; the delta; reboot."""
    out: dict[str, Any] = {"keep_back": keep_back_sums(dev), "before": state(dev)}
    ref = full_ref(cat, "2.113.0")
    out["first"] = hostapp_update(dev, "-i", ref)
    assert out["first"][0] == 0, out["first"][1]
    out["first_state"] = state(dev)
    out["second"] = hostapp_update(dev, "-i", ref)
    assert out["second"][0] == 0, out["second"][1]
    out["staged"] = state(dev)
    out["engine"] = dev.check(
        f"export {HOST_ENGINE}; balena ps -aq --no-trunc; echo ---; balena images -q --no-trunc; echo ---;"
        " ls /mnt/sysroot/inactive/hostapps; echo ---; ls /mnt/sysroot/inactive/balena/overlay2 | awk '$0 != \"l\" { n++ } END { print n + 0 }';"
        " echo ---; balena inspect -f '{{.Id}} {{.Size}} {{json .RepoDigests}}' \"$(balena images -q)\"")
    out["keep_back_staged"] = keep_back_sums(dev)
    out["hooks"] = hook_log(dev)
    reboot(lab, dev)
    wait_for(dev, "cat /run/rollback-health.state", "committed", 60)
    out["booted"] = state(dev)
    out["keep_back_booted"] = keep_back_sums(dev)
    # the delta's base (2.113.0, now the active partition) tampered with: the rebuild must refuse
    layer = dev.check("for d in /mnt/sysroot/active/balena/overlay2/*/diff; do"
                      " [ -f \"$d/etc/osfleet/services/user-app\" ] && echo \"$d\"; done | head -n 1").strip()
    target = f"{layer}/etc/osfleet/services/user-app"
    dev.check(f"cp {target} /tmp/user-app.unit && mount -o remount,bind,rw /mnt/sysroot/active &&"
              f" echo '# tampered' >> {target}")
    try:
        out["tampered"] = hostapp_update(dev, "-i", delta_ref(cat, "2.113.0", "2.114.1"))
        out["tampered_state"] = state(dev)
        out["tampered_leftovers"] = dev.check(LEFTOVERS_SH)
    finally:
        dev.check(f"cat /tmp/user-app.unit > {target} && mount -o remount,bind,ro /mnt/sysroot/active")
    out["delta"] = hostapp_update(dev, "-i", delta_ref(cat, "2.113.0", "2.114.1"))
    assert out["delta"][0] == 0, out["delta"][1]
    out["delta_staged"] = state(dev)
    out["delta_size"] = dev.check(f"{HOST_ENGINE} balena inspect -f '{{{{.Size}}}}' {delta_ref(cat, '2.113.0', '2.114.1')}").strip()
    reboot(lab, dev)
    wait_for(dev, "cat /run/rollback-health.state", "committed", 60)
    out["delta_booted"] = state(dev)
    return out


def scenario_archive(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
    """-f with a docker-archive (first a corrupt one), the engine CLI on the result, reboot."""
    out: dict[str, Any] = {"before": state(dev)}
    src = f"docker://{full_ref(cat, '2.113.0')}"
    dev.check(f"skopeo copy --quiet --src-tls-verify=false {src} docker-archive:/mnt/data/hostapp.tar"
              " && cp /mnt/data/hostapp.tar /mnt/data/corrupt.tar && size=$(stat -c %s /mnt/data/corrupt.tar)"
              " && dd if=/dev/zero of=/mnt/data/corrupt.tar bs=1 count=64 seek=$((size / 2)) conv=notrunc"
              " 2>/dev/null && sync", timeout=120)
    out["corrupt"] = hostapp_update(dev, "-f", "/mnt/data/corrupt.tar")
    out["corrupt_state"] = state(dev)
    dev.check("rm /mnt/data/corrupt.tar && sync")
    out["corrupt_leftovers"] = dev.check(LEFTOVERS_SH)
    out["load"] = hostapp_update(dev, "-f", "/mnt/data/hostapp.tar")
    assert out["load"][0] == 0, out["load"][1]
    out["staged"] = state(dev)
    out["files"] = dev.check("ls -d /mnt/data/resin-data/tmp 2>&1; ls /mnt/data/hostapp.tar")
    image_id = release(cat, "2.113.0")["image_id"]
    registry = cat["registries"]["primary"]
    cli = {
        "images": "balena images --format '{{.ID}}|{{.Repository}}|{{.Tag}}|{{.Size}}'",
        "ps": "balena ps -a -q",
        "ps_running": "balena ps -q | wc -l",
        "inspect_image": f"balena inspect --type image -f '{{{{.Id}}}} {{{{len .RootFS.Layers}}}} {{{{.Os}}}}' {image_id}",
        "inspect_json": f"balena inspect {image_id} | jq -r '.[0].Id'",
        "container": "balena inspect -f '{{.Image}}|{{.Config.Image}}|{{.State.Status}}|{{.HostConfig.Runtime}}|"
                     "{{range .Mounts}}{{.Destination}}={{.Source}}{{end}}' \"$(balena ps -aq)\"",
        "run": f"balena run --rm {image_id} cat /etc/os-release | grep ^VERSION=; balena ps -aq | wc -l",
        "run_env": f"balena run --rm -e FOO=bar {image_id} sh -c 'echo $FOO; exit 7'; echo rc=$?",
        "no_such": "balena inspect no-such-thing; echo rc=$?",
        "rmi_in_use": f"balena rmi {image_id}; echo rc=$?",
        "login": f"balena login -u lab -p secret {registry} && jq -r '.auths | keys[]' /root/.docker/config.json",
        "bad_pull": f"balena pull {registry}/osfleet/genericx86-64-ext:0.0.0; echo rc=$?;"
                    " balena images -q | wc -l; ls /mnt/sysroot/inactive/balena/overlay2 | awk '$0 != \"l\" { n++ } END { print n + 0 }'",
        "no_daemon": "DOCKER_HOST=tcp://127.0.0.1:1 balena ps; echo rc=$?",
    }
    out["cli"] = {}
    for key, command in cli.items():
        out["cli"][key] = dev.run(f"export {HOST_ENGINE}; {command}", timeout=120)
    reboot(lab, dev)
    wait_for(dev, "cat /run/rollback-health.state", "committed", 60)
    out["booted"] = state(dev)
    return out


def stage_and_reboot(out: dict[str, Any], dev: Device, cat: dict[str, Any], version: str) -> int:
    """hostapp-update -i of a release, then a reboot; returns the console offset before it."""
    out["before"] = state(dev)
    out["update"] = hostapp_update(dev, "-i", full_ref(cat, version))
    assert out["update"][0] == 0, out["update"][1]
    since = len(dev.console())
    dev.run(REBOOT_CMD)
    return since


def scenario_health(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
    """The health-fault release: rollback-health runs the old OS's hooks from its hostapp."""
    out: dict[str, Any] = {}
    since = stage_and_reboot(out, dev, cat, "2.115.0")
    wait_console(dev, since, "OSFLEET-BOOT-OK 2.115.0 resin-rootB", "ROLLBACK-HEALTH rolled-back to 2.88.4",
                 "OSFLEET-BOOT-OK 2.88.4 resin-rootA", timeout=150)
    out["after"] = wait_for(dev, STATE_SH, "root=resin-rootA", 30)
    out["state"] = state(dev)
    out["hooks"] = hook_log(dev)
    out["overlays"] = dev.check("grep -c ' overlay ' /proc/mounts")
    return out


def scenario_bootfault(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
    """The boot-fault release: three failed boots, the bootloader falls back, rollback-altboot."""
    out: dict[str, Any] = {}
    since = stage_and_reboot(out, dev, cat, "2.115.1")
    out["console"] = wait_console(dev, since, "ALTBOOT bootcount=4", "ROLLBACK-ALTBOOT",
                                  "OSFLEET-BOOT-OK 2.88.4 resin-rootA", timeout=180)
    wait_for(dev, STATE_SH, "root=resin-rootA", 30)
    out["state"] = state(dev)
    out["hooks"] = hook_log(dev)
    return out


def scenario_hookfail(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
    """A forward hook fails (boot partition full): the current OS's hooks recover, or not with
    -x; then a good run, and that root without its boot link: it does not boot (altboot)."""
    out: dict[str, Any] = {"before": state(dev)}
    ref = full_ref(cat, "2.113.0")
    dev.check("free=$(df -kP /mnt/boot | awk 'NR == 2 { print $4 }') &&"
              " dd if=/dev/zero of=/mnt/boot/filler bs=1k count=$((free - 256)) 2>/dev/null && sync")
    out["failed"] = hostapp_update(dev, "-i", ref)
    out["failed_state"] = state(dev)
    out["failed_hooks"] = hook_log(dev)
    out["failed_x"] = hostapp_update(dev, "-x", "-i", ref)
    out["failed_x_hooks"] = hook_log(dev)
    dev.check("rm -f /mnt/boot/filler && sync")
    out["good"] = hostapp_update(dev, "-i", ref)
    assert out["good"][0] == 0, out["good"][1]
    out["good_state"] = state(dev)
    dev.check("rm /mnt/sysroot/inactive/boot && sync")
    since = len(dev.console())
    dev.run(REBOOT_CMD)
    out["console"] = wait_console(dev, since, "ALTBOOT bootcount=4", "ROLLBACK-ALTBOOT",
                                  "OSFLEET-BOOT-OK 2.88.4 resin-rootA", timeout=180)
    wait_for(dev, STATE_SH, "root=resin-rootA", 30)
    out["nokernel_state"] = state(dev)
    return out


def scenario_cut(point: str, systemd_run: bool) -> Callable[[LabHandle, Device, dict[str, Any]], dict[str, Any]]:
    """hostapp-update (detached with setsid, or with systemd-run) blocked at `balena <point>`, the
    power cut there; then the rerun (with systemd-run --wait: its status and its log)."""
    def run(lab: LabHandle, dev: Device, cat: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"data": dev.check(USER_DATA_SH), "before": state(dev)}
        ref = full_ref(cat, "2.113.0")
        dev.check(f"sh -c {shlex.quote(SHIM_SH)} sh {point}")
        if systemd_run:
            out["started"] = dev.run("systemd-run --unit=osfleet-hup -E PATH=/tmp/shim:/usr/sbin:/usr/bin:/sbin:/bin"
                                     f" hostapp-update -i {ref}")
        else:
            dev.run(f"setsid sh -c 'PATH=/tmp/shim:$PATH hostapp-update -i {ref} >/tmp/hu.log 2>&1'"
                    " >/dev/null 2>&1 </dev/null & sleep 0.5")
        out["reached"] = wait_for(dev, "ls /tmp/shim/reached", "reached", 180)
        out["unit_running"] = dev.run("systemctl is-active osfleet-hup")
        out["inactive"] = dev.check("readlink /mnt/sysroot/inactive/current; true")
        lab.labctl("powercut", dev.name)
        lab.labctl("poweron", dev.name)
        out["after_cut"] = state(dev)
        out["unit_after_cut"] = dev.run("systemctl is-active osfleet-hup")
        out["data_after"] = dev.check("cd /mnt/data/labtest && sha256sum f1 f2 f3")
        if systemd_run:
            rc, so, se = dev.run(f"systemd-run --wait --unit=osfleet-hup hostapp-update -i {ref}", timeout=300)
            out["rerun"] = (rc, so + se)
            out["unit_show"] = dev.check("systemctl show -p ActiveState,Result,ExecMainStatus osfleet-hup")
            out["unit_log"] = dev.check("journalctl -u osfleet-hup")
        else:
            out["rerun"] = hostapp_update(dev, "-i", ref)
        assert out["rerun"][0] == 0, out["rerun"][1]
        out["rerun_state"] = state(dev)
        reboot(lab, dev)
        out["booted"] = state(dev)
        return out
    return run


RUNNERS: dict[str, Callable[[LabHandle, Device, dict[str, Any]], dict[str, Any]]] = {
    "view": scenario_view, "registry": scenario_registry, "archive": scenario_archive,
    "health": scenario_health, "bootfault": scenario_bootfault, "hookfail": scenario_hookfail,
    "cut_create": scenario_cut("create", systemd_run=False), "cut_hooks": scenario_cut("run", systemd_run=True),
}


class Scenarios:
    def __init__(self, lab: LabHandle) -> None:
        self.lab = lab
        self.catalog = catalog_of(lab)
        self.devices = dict(zip(SCENARIOS, lab.devices(), strict=True))
        self._pool = ThreadPoolExecutor(max_workers=len(SCENARIOS))
        self._futures: dict[str, Future[dict[str, Any]]] = {
            name: self._pool.submit(RUNNERS[name], lab, self.devices[name], self.catalog)
            for name in SCENARIOS}

    def result(self, name: str) -> dict[str, Any]:
        return self._futures[name].result(timeout=900)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def scenarios() -> Iterator[Scenarios]:
    prefix = unique_prefix("h")
    runs = None
    try:
        lab = bring_up(prefix, len(SCENARIOS), "--os", "2.88.4", "--profile", "balenaos")
        runs = Scenarios(lab)
        yield runs
    finally:
        if runs is not None:
            runs.close()
        labctl("down", "--prefix", prefix, check=False)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the tests ----------------------------------------------------------------------------------------

def test_balenaos_device_boots_its_hostapp_as_an_overlay(scenarios: Scenarios) -> None:
    out = scenarios.result("view")
    mounts, parts = out["mounts"], out["parts"]
    assert mounts["/"][0] == "overlay" and mounts["/"][2] == "overlay", mounts["/"]
    assert mounts["/"][3].startswith("ro,") and "lowerdir=" in mounts["/"][3]
    assert "upperdir" not in mounts["/"][3]
    assert mounts["/mnt/sysroot/active"][0] == parts["resin-rootA"]
    assert mounts["/mnt/sysroot/active"][3].startswith("ro")
    assert mounts["/mnt/sysroot/inactive"][0] == parts["resin-rootB"]
    assert mounts["/mnt/sysroot/inactive"][3].startswith("rw")
    st = out["state"]
    assert (st["root"], st["version"], st["fstype"]) == ("resin-rootA", "2.88.4", "overlay")
    assert st["active_image"] == release(scenarios.catalog, "2.88.4")["image_id"]
    row = next(r for r in out["status"] if r["device"] == scenarios.devices["view"].name)
    assert (row["profile"], row["root"], row["os_version"]) == ("balenaos", "resin-rootA", "2.88.4")
    assert out["engine"].split() == ["0", "0"]  # the balena-host engine: the empty inactive partition
    # -sysroot mounts the partition's hostapp and prints where (like mobynit)
    lines = out["sysroot_mount"].splitlines()
    assert lines[0].startswith("/mnt/sysroot/active/balena/overlay2/") and lines[0].endswith("/merged")
    assert lines[1] == 'VERSION="2.88.4"'


def test_provisioned_partition_holds_a_hostapp_in_the_engine_shape(scenarios: Scenarios) -> None:
    values: dict[str, list[str]] = {}
    for line in scenarios.result("view")["layout"].splitlines():
        key, _sep, value = line.partition("=")
        values.setdefault(key, []).append(value)
    one = {k: v[0] for k, v in values.items()}
    rel = release(scenarios.catalog, "2.88.4")
    cid = one["current"].removeprefix("hostapps/")
    assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    assert (one["boot"], one["init"], one["counter"], one["machine_id"]) == (
        "current/boot", "../current/boot/init", "1", "0")
    assert "missing" not in values, values.get("missing")
    assert one["hostapps"].split() == [cid]
    config = json.loads(one["config"])
    vid = config["MountPoints"]["/boot"]["Name"]
    assert one["hostapp_boot"] == f"../../balena/volumes/{vid}/_data"
    assert config["ID"] == cid and config["Image"] == rel["image_id"] and config["Driver"] == "overlay2"
    assert config["Dead"] is False and config["Removing"] is False and one["containers"] == "1"
    assert config["MountPoints"]["/boot"]["Type"] == "volume" and len(vid) == 64
    assert one["init_id"] == f"{one['mount_id']}-init"
    links = [line.split() for line in values["link"]]
    assert len(links) == 1 + layer_count(rel["version"])  # the init layer, then the image's layers
    assert links[0][1] == f"../{one['mount_id']}-init/diff"
    assert one["lower"] == ":".join(link for link, _target in links)
    assert int(one["sizes"]) == rel["size_unpacked"]
    images = [line.split() for line in values["imagedb"]]
    assert images == [[rel["image_id"].removeprefix("sha256:")] * 2]
    repos = json.loads(one["repos"])["Repositories"]
    assert any(v == rel["image_id"] for tags in repos.values() for v in tags.values())
    kernel_boot, kernel_payload = one["kernel"].split()
    assert kernel_boot == kernel_payload  # the kernel, found through the partition's boot link
    assert one["os_release"] == "1"
    stamp = json.loads(one["stamp"])
    assert (stamp["version"], stamp["digest"], stamp["source"]) == ("2.88.4", rel["digest"], "provision")


def test_registry_pull_by_digest_then_reboot_boots_the_new_hostapp(scenarios: Scenarios) -> None:
    out = scenarios.result("registry")
    rel = release(scenarios.catalog, "2.113.0")
    for run in ("first", "second"):
        rc, text = out[run]
        assert rc == 0, text
        for line in ("Before hooks (old os) ran successfully",
                     "New/Forward hooks (new os container) ran successfully.",
                     "After hooks (old os) ran successfully"):
            assert line in text, text
    staged = out["staged"]
    assert staged["inactive_image"] == rel["image_id"] and staged["counter"] == "2"
    assert staged["env"].split() == ["resin_root_part=3", "upgrade_available=1"]
    booted = out["booted"]
    assert (booted["root"], booted["version"], booted["fstype"]) == ("resin-rootB", "2.113.0", "overlay")
    assert booted["active_image"] == rel["image_id"] and booted["health"] == "committed"
    assert booted["env"].split() == ["resin_root_part=3", "upgrade_available=0"]
    assert booted["boot_id"] != out["before"]["boot_id"]
    engine = out["engine"].split("---")
    assert engine[4].split()[0] == rel["image_id"] and int(engine[4].split()[1]) == rel["size_unpacked"]
    assert json.loads(engine[4].split()[2]) == [full_ref(scenarios.catalog, "2.113.0")]


def test_hostapp_update_twice_starts_from_scratch(scenarios: Scenarios) -> None:
    out = scenarios.result("registry")
    rel = release(scenarios.catalog, "2.113.0")
    containers, images, hostapps, dirs = (part.split() for part in out["engine"].split("---")[:4])
    assert containers == [out["staged"]["inactive_cid"]] == hostapps
    assert out["staged"]["inactive_cid"] != out["first_state"]["inactive_cid"]
    assert images == [rel["image_id"]]
    # what is left in the store: the image's layers, the container's rw and init layers
    assert dirs == [str(layer_count(rel["version"]) + 2)]


def test_hooks_ran_from_the_new_os(scenarios: Scenarios) -> None:
    out = scenarios.result("registry")
    assert out["keep_back"] == out["keep_back_staged"] == out["keep_back_booted"]
    staged = out["staged"]
    assert "2.113.0" in staged["bootfiles"]  # 1-bootfiles copied the new OS's /resin-boot
    assert set(staged["state"].split()) >= {"rollback-health-breadcrumb", "rollback-altboot-breadcrumb",
                                            "rollback-health-variables"}
    phases = [" ".join(line.split()[1:]) for line in out["hooks"]]
    once = ["phase=before hooks-of=2.113.0 running-on=2.88.4 DURING_UPDATE=1",
            "phase=forward hooks-of=2.113.0 running-on=2.113.0 DURING_UPDATE=1",
            "phase=after hooks-of=2.113.0 running-on=2.88.4 DURING_UPDATE=1"]
    assert phases == once * 2  # two runs, each: before (old OS), forward (new OS's container), after


def assert_refused(out: dict[str, Any], run: str, reason: str, env: list[str]) -> None:
    """A hostapp-update that failed verifying the image: nothing armed, nothing left behind."""
    rc, text = out[run]
    assert rc != 0 and reason in text, text
    assert out[f"{run}_state"]["env"].split() == env
    assert "breadcrumb" not in out[f"{run}_state"]["state"]
    assert out[f"{run}_leftovers"].split() == ["0", "0", "0"]


def test_delta_pull_rebuilds_the_target_image_on_the_active_base(scenarios: Scenarios) -> None:
    out = scenarios.result("registry")
    target = release(scenarios.catalog, "2.114.1")
    assert_refused(out, "tampered", "does not match its listing", ["resin_root_part=3", "upgrade_available=0"])
    assert out["delta"][0] == 0, out["delta"][1]
    assert out["delta_staged"]["inactive_image"] == target["image_id"]
    assert int(out["delta_size"]) == target["size_unpacked"]
    booted = out["delta_booted"]
    assert (booted["root"], booted["version"], booted["health"]) == ("resin-rootA", "2.114.1", "committed")
    assert booted["active_image"] == target["image_id"]


def test_saved_image_loaded_with_f(scenarios: Scenarios) -> None:
    out = scenarios.result("archive")
    rel = release(scenarios.catalog, "2.113.0")
    assert_refused(out, "corrupt", "does not match", ["resin_root_part=2", "upgrade_available=0"])
    assert out["load"][0] == 0, out["load"][1]
    assert out["staged"]["inactive_image"] == rel["image_id"]
    assert "No such file" in out["files"] and "/mnt/data/hostapp.tar" in out["files"]
    booted = out["booted"]
    assert (booted["root"], booted["version"], booted["active_image"]) == (
        "resin-rootB", "2.113.0", rel["image_id"])


def test_balena_engine_cli(scenarios: Scenarios) -> None:
    cli = scenarios.result("archive")["cli"]  # name -> (rc, stdout, stderr)
    rel = release(scenarios.catalog, "2.113.0")
    hexid = rel["image_id"].removeprefix("sha256:")
    # an archive from `skopeo copy docker://...@digest docker-archive:FILE` names no repository:
    # hostapp-update creates the container from the image id `balena load` printed
    human = f"{rel['size_unpacked'] / 1e6:.3g}MB"  # docker's HumanSizeWithPrecision(size, 3)
    assert cli["images"][:2] == (0, f"{hexid[:12]}|<none>|<none>|{human}\n")
    assert cli["ps"][0] == 0 and len(cli["ps"][1].split()) == 1 and cli["ps_running"][1].strip() == "0"
    assert cli["inspect_image"][:2] == (0, f"{rel['image_id']} 2 linux\n")
    assert cli["inspect_json"][:2] == (0, f"{rel['image_id']}\n")
    image, ref, status, runtime, mounts = cli["container"][1].strip().split("|")
    assert (image, ref, status, runtime) == (rel["image_id"], rel["image_id"], "created", "bare")
    assert mounts.startswith("/boot=/mnt/sysroot/inactive/balena/volumes/") and mounts.endswith("/_data")
    assert cli["run"][:2] == (0, 'VERSION="2.113.0"\n1\n')  # --rm: the hostapp container only
    assert cli["run_env"][1] == "bar\nrc=7\n"
    # like docker: an empty JSON list on stdout, the error on stderr, exit 1
    assert cli["no_such"][1:] == ("[]\nrc=1\n", "Error: No such object: no-such-thing\n")
    assert cli["rmi_in_use"][1] == "rc=1\n" and "(must be forced)" in cli["rmi_in_use"][2]
    assert cli["login"][:2] == (0, f"Login Succeeded\n{scenarios.catalog['registries']['primary']}\n")
    rc, stdout, stderr = cli["bad_pull"]
    assert stdout.split()[-3:] == ["rc=1", "1", str(layer_count("2.113.0") + 2)], stdout
    assert stderr.startswith("Error response from daemon: pull of ") and "manifest unknown" in stderr
    assert cli["no_daemon"][1] == "rc=1\n" and cli["no_daemon"][2].startswith("Cannot connect")


def test_health_fault_rolls_back_through_the_old_hostapp(scenarios: Scenarios) -> None:
    out = scenarios.result("health")
    st = out["state"]
    assert (st["root"], st["version"]) == ("resin-rootA", "2.88.4")
    assert st["env"].split() == ["resin_root_part=2", "upgrade_available=0"]
    assert "rollback-health-triggered" in st["state"] and "breadcrumb" not in st["state"]
    assert "2.88.4" in st["bootfiles"]  # the old OS's hooks put its boot files back
    # the rollback ran the OLD OS's hooks (from the inactive hostapp, mounted by this OS's init)
    assert out["hooks"][-1].split()[1:] == ["phase=forward", "hooks-of=2.88.4", "running-on=2.88.4",
                                            "DURING_UPDATE=1"]
    assert out["overlays"].strip() == "1"  # the old root was unmounted again


def test_boot_fault_falls_back_and_altboot_restores(scenarios: Scenarios) -> None:
    out = scenarios.result("bootfault")
    assert out["console"].count("OSFLEET-BOOT-FAIL 2.115.1") == 3, out["console"]
    st = out["state"]
    assert (st["root"], st["version"]) == ("resin-rootA", "2.88.4")
    assert st["env"].split() == ["resin_root_part=2", "upgrade_available=0"]
    assert "rollback-altboot-triggered" in st["state"] and "breadcrumb" not in st["state"]
    assert "2.88.4" in st["bootfiles"]
    assert out["hooks"][-1].split()[1:] == ["phase=forward", "hooks-of=2.88.4", "running-on=2.88.4",
                                            "DURING_UPDATE=0"]


def test_failing_hook_runs_the_current_os_hooks_unless_x(scenarios: Scenarios) -> None:
    out = scenarios.result("hookfail")
    rc, text = out["failed"]
    assert rc == 1 and "Boot files copy operations will fail" in text, text
    assert "Running current hooks" in text and "Update failed." in text
    assert out["failed_state"]["env"].split() == ["resin_root_part=2", "upgrade_available=0"]
    assert "breadcrumb" not in out["failed_state"]["state"]
    recovery = "phase=forward hooks-of=2.88.4 running-on=2.88.4 DURING_UPDATE=0"
    assert " ".join(out["failed_hooks"][-1].split()[1:]) == recovery
    rc, text = out["failed_x"]
    assert rc == 1 and "Running current hooks" not in text and "Failed to run the new hooks" in text
    assert out["failed_x_hooks"][-1].split()[1] == "phase=forward"  # no recovery after it
    assert "hooks-of=2.113.0" in out["failed_x_hooks"][-1]
    assert out["good_state"]["env"].split() == ["resin_root_part=3", "upgrade_available=1"]


def test_root_without_boot_link_does_not_boot(scenarios: Scenarios) -> None:
    out = scenarios.result("hookfail")
    console = out["console"]
    assert console.count("BOOTFAIL resin-rootB has no kernel") == 3, console
    st = out["nokernel_state"]
    assert (st["root"], st["version"]) == ("resin-rootA", "2.88.4")
    assert st["env"].split() == ["resin_root_part=2", "upgrade_available=0"]
    assert "rollback-altboot-triggered" in st["state"]


@pytest.mark.parametrize("name", ["cut_create", "cut_hooks"])
def test_power_cut_during_hostapp_update_keeps_the_old_os(scenarios: Scenarios, name: str) -> None:
    out = scenarios.result(name)
    if name == "cut_hooks":  # the new hostapp was complete, the forward hooks had not run
        assert out["inactive"].startswith("hostapps/")
    after = out["after_cut"]
    assert (after["root"], after["version"]) == ("resin-rootA", "2.88.4")
    assert after["env"].split() == ["resin_root_part=2", "upgrade_available=0"]
    assert after["boot_id"] != out["before"]["boot_id"]
    assert out["data_after"] == out["data"]
    assert out["rerun_state"]["inactive_image"] == release(scenarios.catalog, "2.113.0")["image_id"]
    assert (out["booted"]["root"], out["booted"]["version"]) == ("resin-rootB", "2.113.0")
    if name == "cut_hooks":  # run with systemd-run: a transient unit, gone with the power cut
        assert out["started"][0] == 0 and "Running as unit: osfleet-hup.service" in out["started"][2]
        assert out["unit_running"][:2] == (0, "active\n")
        assert out["unit_after_cut"][0] == 5 and "not found" in out["unit_after_cut"][2]
        assert "Finished with result: success" in out["rerun"][1]
        assert out["unit_show"] == "ActiveState=inactive\nResult=success\nExecMainStatus=0\n"
        assert "After hooks (old os) ran successfully" in out["unit_log"]
