# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle of one lab (one prefix): up, down, status and the per-device operations.

Everything a prefix makes lives in ``build/lab/<prefix>/`` (docs/internals.md §4). ``state.json``
is written *before* each resource is made (the intent) and again after (what was made), so that
``down`` can undo a run that crashed halfway: it stops the power supplies (recorded PID + start
time, then a sweep of each device's PID namespace), stops the services, unmounts whatever of the
prefix is still mounted on the host, detaches the loop devices (recorded, and double-checked with
``losetup -j``) and removes the directory.

The OS releases, their images, registries and catalog come from ``releases.py`` / ``services.py``
(another engineer's part); this module only calls their documented functions.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import device as dev
from . import faults as flt
from . import inventory
from .util import (
    CACHE_DIR,
    LAB_DIR,
    LabError,
    UsageError,
    cgroup2_root,
    check_prefix,
    file_lock,
    kill_recorded,
    log,
    now_iso,
    proc_alive,
    proc_cgroup2,
    proc_start_time,
    read_json,
    run,
    ssh_banner,
    port_free,
    wait_gone,
    wait_until,
    write_atomic,
    write_json,
)

MAX_DEVICES = 50
DEFAULT_DEVICE_TYPE = "genericx86-64-ext"
#: the device profiles (docs/internals.md §4): "ab" = the root partitions hold plain OS roots
#: (generic A/B devices); "balenaos" = they hold hostapps, booted the way balenaOS boots them
PROFILES = ("ab", "balenaos")
#: the profile `labctl up` uses unless told otherwise: a real balenaOS device (the test suites
#: written for the generic A/B layout ask for "ab" themselves)
DEFAULT_PROFILE = "balenaos"
#: environment variable that overrides DEFAULT_PROFILE for `labctl up` without --profile
PROFILE_ENV = "OSFLEET_LAB_PROFILE"
SSH_PORT_BASE = 22301
BOOT_TIMEOUT = 90.0
OWNER_ENV = "OSFLEET_LAB_OWNER"
HOST_COMMANDS = ("unshare", "setpriv", "losetup", "partx", "sfdisk", "mkfs.ext4", "debugfs",
                 "blkid", "blockdev", "pivot_root", "ssh", "ssh-keygen", "mknod")


# --- the releases engineer's API (releases.py / services.py) --------------------------------

def _import(name: str) -> Any:
    try:
        return importlib.import_module(f"osfleet_lab.{name}")
    except ImportError as exc:
        raise LabError(f"the lab's {name} module is not available: {exc}") from exc


def _releases() -> Any:
    return _import("releases")


def _services() -> Any:
    return _import("services")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def pick_release(device_type: str, version: str | None) -> Any:
    """The release to provision (default: the oldest of the type), or UsageError."""
    releases = _releases().known_releases()
    types = sorted({r.device_type for r in releases})
    of_type = sorted((r for r in releases if r.device_type == device_type),
                     key=lambda r: version_key(r.version))
    if not of_type:
        raise UsageError(f"unknown device type {device_type!r} (known: {', '.join(types)})")
    if version is None:
        return of_type[0]
    for rel in of_type:
        if rel.version == version:
            return rel
    known = ", ".join(r.version for r in of_type)
    raise UsageError(f"unknown OS version {version!r} for {device_type} (known: {known})")


def disk_mib(device_type: str) -> int:
    """The size of a device's disk: room for the largest partition layout of any release of its
    device type (the advanced update writes a release's whole disk, on its own layout)."""
    rels = _releases().device_types()[device_type].releases
    return max(sum(size for _label, size in _releases().layout(r.layout)) for r in rels) + 2


def short_type(device_type: str) -> str:
    """Stable short name of a device type for device names: genericx86-64-ext -> x86."""
    base = device_type[len("generic"):] if device_type.startswith("generic") else device_type
    return re.sub(r"[^a-z0-9]", "", base.split("-")[0].lower()) or "dev"


# --- preflight -------------------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("labctl must run as root (it makes loop devices and namespaces)")


def preflight(netns: bool = False) -> None:
    """Root and the host features a device needs; UsageError (exit 2) before anything is made."""
    require_root()
    needed = HOST_COMMANDS + (("ip",) if netns else ())
    missing = [cmd for cmd in needed if shutil.which(cmd) is None]
    if missing:
        raise UsageError(f"missing host commands: {', '.join(missing)} (see tests/lab/apt-packages.txt)")
    if not Path("/dev/loop-control").exists():
        raise UsageError("this kernel has no loop devices (/dev/loop-control is missing)")
    probe = subprocess.run(["unshare", "-m", "-p", "-f", "-u", "--kill-child", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"
        raise UsageError(f"this kernel cannot make mount/PID/UTS namespaces: unshare: {reason}")


# --- state -----------------------------------------------------------------------------------

class State:
    """build/lab/<prefix>/state.json, updated under a thread lock and written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.data: dict[str, Any] = read_json(path, {}) or {}
        self.data.setdefault("devices", {})

    def save(self) -> None:
        with self.lock:
            write_json(self.path, self.data)

    def update(self, fn: Callable[[dict[str, Any]], None]) -> None:
        with self.lock:
            fn(self.data)
            self.save()

    def device(self, name: str) -> dict[str, Any]:
        record = self.data["devices"].get(name)
        if record is None:
            known = ", ".join(sorted(self.data["devices"])) or "none"
            raise UsageError(f"no device {name!r} in this lab (devices: {known})")
        return record


# Ports are unique machine-wide, also between checkouts (each has its own build/lab): the lab
# directories in use are listed in /run (gone after a reboot, like the labs themselves).
MACHINE_DIR = Path("/run/osfleet-lab")


def all_claimed_ports() -> set[int]:
    """SSH ports recorded by every lab of every checkout on this machine (call under the lock)."""
    listed = MACHINE_DIR / "lab-dirs"
    dirs = {line for line in (listed.read_text().splitlines() if listed.exists() else []) if line}
    dirs.add(str(LAB_DIR))
    dirs = {d for d in dirs if Path(d).is_dir()}
    write_atomic(listed, "".join(f"{d}\n" for d in sorted(dirs)))
    ports: set[int] = set()
    for lab_dir in dirs:
        for state in Path(lab_dir).glob("*/state.json"):
            for record in (read_json(state, {}) or {}).get("devices", {}).values():
                if record.get("port"):
                    ports.add(int(record["port"]))
    return ports


# --- the lab ---------------------------------------------------------------------------------

class Lab:
    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self.dir = LAB_DIR / prefix
        self.state = State(self.dir / "state.json")
        self.key = self.dir / "id_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.inventory = self.dir / "inventory.yml"

    # -- helpers
    def dev_dir(self, name: str) -> Path:
        return self.dir / "devices" / name

    def exists(self) -> bool:
        return self.state.path.exists()

    def require(self) -> None:
        if not self.exists():
            raise UsageError(f"no lab with prefix {self.prefix!r} (run: labctl up --prefix {self.prefix})")

    def mark_children(self) -> None:
        """Mark every process started from now on as this lab's (see stray_processes)."""
        os.environ[OWNER_ENV] = str(self.dir)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The prefix's lock (one up/down/new supply at a time), with state.json read afresh."""
        with file_lock(self.dir.parent / f".{self.prefix}.lock", f"lab {self.prefix!r}"):
            self.state = State(self.state.path)
            yield

    def ssh_argv(self, record: dict[str, Any], *, timeout: int = 5) -> list[str]:
        return ["ssh", "-p", str(record["port"]), "-i", str(self.key), *inventory.ssh_options(
            self.known_hosts), "-o", f"ConnectTimeout={timeout}", "root@127.0.0.1"]

    def ssh(self, name: str, command: str, *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        record = self.state.device(name)
        try:
            return subprocess.run([*self.ssh_argv(record), command], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess([], 255, "", f"ssh timed out after {timeout}s")

    # -- up
    def up(self, count: int, device_type: str, version: str | None, netns: bool,
           profile: str = DEFAULT_PROFILE, disk_images: bool = False, private_registry: bool = False) -> Path:
        if not 1 <= count <= MAX_DEVICES:
            raise UsageError(f"--devices must be between 1 and {MAX_DEVICES}, not {count}")
        if profile not in PROFILES:
            raise UsageError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
        preflight(netns)
        rel = pick_release(device_type, version)
        layout = [(str(label), int(size)) for label, size in _releases().layout(rel.layout)]
        with self.locked():
            existing = len(self.state.data["devices"])
            if existing + count > MAX_DEVICES:
                raise UsageError(f"lab {self.prefix!r} has {existing} devices; {count} more would"
                                 f" exceed {MAX_DEVICES}")
            self.mark_children()
            t0 = time.monotonic()
            log(f"building releases (cache {CACHE_DIR})")
            build = _releases().ensure_built(CACHE_DIR, disk_images=disk_images, disk_profile=profile,
                                             disk_device_type=rel.device_type)
            if disk_images and self.state.data.get("services"):
                log("the services of this prefix run already: --disk-images only reaches the catalog of a new prefix")
                running = self.state.data["services"].get("disk_profile", "ab")
                if running != profile:
                    log(f"the catalog of this prefix names the disk images of the {running} profile, not of {profile}")
            if private_registry and self.state.data.get("services") and not self.state.data["services"].get("private_registry"):
                log("the services of this prefix run already: --private-registry only starts with a new prefix")
            self.dir.mkdir(parents=True, exist_ok=True)
            self.state.update(lambda d: d.update(prefix=self.prefix, lab_dir=str(self.dir)))
            self._ensure_key()
            self._ensure_services(private_registry, profile)
            rootfs, image = self._root_image(build, rel, profile, layout)
            names = self._allocate(count, rel, netns, profile)
            t1 = time.monotonic()
            log(f"preparing and booting {count} device(s): {names[0]} .. {names[-1]}")

            def prepare_and_start(name: str) -> None:  # a device boots as soon as its disk is ready
                self._prepare(name, rel, rootfs, image, layout, build=build)
                self._start(name)

            with ThreadPoolExecutor(max_workers=min(8, count)) as pool:
                list(pool.map(prepare_and_start, names))
            t2 = time.monotonic()
            self.write_inventory()  # also when a device then fails to boot
            self._wait_booted({n: 0 for n in names})
            t3 = time.monotonic()
            log(f"{count} device(s) up in {t3 - t0:.1f}s: build+services {t1 - t0:.1f}s, disks and"
                f" power on {t2 - t1:.1f}s, rest of the boots {t3 - t2:.1f}s")
            return self.inventory

    @staticmethod
    def _root_image(build: Any, rel: Any, profile: str, layout: list[tuple[str, int]]) -> tuple[Path, Path]:
        """The release's root (tree) and the ext4 image of its root partition for ``profile``."""
        rootfs = Path(build.rootfs(rel.device_type, rel.version))  # release_rootfs, without a second ensure_built
        if profile == "balenaos":
            image = _import("hostapp").root_image(CACHE_DIR, build, rel.device_type,
                                                  rel.version, dict(layout)["resin-rootA"])
        else:
            image = dev.root_image(CACHE_DIR, rootfs, f"{build.key}-{rel.device_type}-{rel.version}",
                                   dict(layout)["resin-rootA"])
        return rootfs, image

    def reflash(self, name: str, version: str | None = None, timeout: float = BOOT_TIMEOUT) -> str:
        """Write a fresh disk onto a device, as a technician with a USB flasher would: power off,
        the whole disk rewritten for ``version`` (default: the version it was made with) in the
        device's profile, on the layout of that release, with the device's own identity (name, SSH
        host key, the lab's key, port) and new boot, state and data partitions; then power on (the
        firmware reads the new partition table). For a device that a drill left unbootable, or one
        to bring back to a known release. Returns the version written."""
        self.require()
        record = self.state.device(name)
        rel = pick_release(record["device_type"], version or record["os_version"])
        layout = [(str(label), int(size)) for label, size in _releases().layout(rel.layout)]
        if self.supply_alive(name) and self.power_state(name).get("state") == "on":
            self.powercut(name)
        build = _releases().ensure_built(CACHE_DIR)
        rootfs, image = self._root_image(build, rel, record.get("profile", "ab"), layout)
        since = dev.console_size(self.dev_dir(name))
        with self.locked():
            self._prepare(name, rel, rootfs, image, layout, new_host_key=False, build=build)
            self.state.update(lambda d: d["devices"][name].update(os_version=rel.version))
            self._reflashed_faults(name)
            # the new disk has the device's lab host key: a takeover since (its own new key, which
            # the advanced role pinned in the lab's known_hosts) made every SSH to it fail
            inventory.pin_host_key(self.known_hosts, int(record["port"]), self.state.device(name)["host_key"])
        log(f"{name}: reflashed with {rel.device_type} {rel.version} (layout {rel.layout})")
        if not self.supply_alive(name):
            with self.locked():
                self._start(name)
        else:
            self._request_poweron(name)
        self._wait_booted({name: since}, timeout)
        return str(rel.version)

    def _request_poweron(self, name: str) -> None:
        """Ask a running supply whose power is off (or dead) to power on, and wait until it took the
        request (a dead supply still says "dead" until then)."""
        ctl = self.dev_dir(name) / "power.ctl"
        write_atomic(ctl, "on\n")  # the supply polls it
        wait_until(lambda: not ctl.exists(), 10, f"{name}'s power supply to take the power-on request", interval=0.05)

    def catalog_path(self) -> Path:
        services = self.state.data.get("services") or {}
        return Path(services.get("catalog", self.dir / "catalog.json"))

    def service_ports(self) -> list[int]:
        """Loopback ports of the prefix's services (registries, HTTP): what a netns device needs."""
        services = self.state.data.get("services") or {}
        endpoints = json.dumps([services.get("registries"), services.get("http"),
                                (services.get("private_registry") or {}).get("addr")])
        return sorted({int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", endpoints)})

    def _ensure_key(self) -> None:
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"osfleet-lab-{self.prefix}",
                 "-f", self.key])

    def _ensure_services(self, private_registry: bool = False, disk_profile: str = "ab") -> None:
        """Start the prefix's services unless they run; the catalog's disk images are those of
        ``disk_profile`` (the profile of the devices of the ``up`` that starts them)."""
        if self.state.data.get("services"):
            return
        log("starting services (registries, HTTP, catalog)" + (", a private registry" if private_registry else ""))
        services = _services().start_services(self.dir, CACHE_DIR, private_registry=private_registry,
                                              disk_profile=disk_profile)
        self.state.update(lambda d: d.update(services=services))

    def _allocate(self, count: int, rel: Any, netns: bool, profile: str) -> list[str]:
        """Names and SSH ports of new devices, recorded in state.json under the global port lock."""
        short = short_type(rel.device_type)
        names: list[str] = []
        with file_lock(MACHINE_DIR / "ports.lock", "the lab port table"):
            claimed = all_claimed_ports()
            used_idx = {int(r["index"]) for r in self.state.data["devices"].values()
                        if r["device_type"] == rel.device_type}
            port = SSH_PORT_BASE
            idx = 1
            while len(names) < count:
                while idx in used_idx:
                    idx += 1
                while port in claimed or not port_free(port):
                    port += 1
                name = f"{self.prefix}-{short}-{idx:02d}"
                record = {"index": idx, "device_type": rel.device_type, "os_version": rel.version,
                          "profile": profile, "kernel": rel.kernel,
                          "port": port, "netns": netns, "loop": None, "supply": None,
                          "image": str(self.dev_dir(name) / "disk.img")}
                self.state.update(lambda d, n=name, r=record: d["devices"].__setitem__(n, r))
                names.append(name)
                used_idx.add(idx)
                claimed.add(port)
        return names

    def _prepare(self, name: str, rel: Any, rootfs: Path, image: Path,
                 layout: list[tuple[str, int]], new_host_key: bool = True, build: Any = None) -> None:
        """Write the device's new disk (``build``: the build of this up or reflash, checked once
        for all its devices: ``ensure_built`` walks every release root, ~0.1 s CPU a call) and attach it."""
        record = self.state.device(name)
        ddir = self.dev_dir(name)
        ddir.mkdir(parents=True, exist_ok=True)
        host_key = ddir / "ssh_host_ed25519_key"
        if new_host_key or not host_key.exists():
            host_key.unlink(missing_ok=True)
            Path(f"{host_key}.pub").unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", host_key])
        provision = dev.Provision(
            name=name, device_type=rel.device_type, version=rel.version,
            stamp=_releases().release_stamp(CACHE_DIR, rel.device_type, rel.version, "provision", build=build),
            port=dev.NETNS_SSH_PORT if record.get("netns") else int(record["port"]),
            root_image=image, rootfs=rootfs, host_key=host_key,
            authorized_key=Path(f"{self.key}.pub"), layout=layout,
            profile=record.get("profile", "ab"), disk_mib=disk_mib(rel.device_type))
        parts = dev.build_disk(Path(record["image"]), provision)
        self.state.update(lambda d: d["devices"][name].update(
            labels=[p.label for p in parts], host_key=Path(f"{host_key}.pub").read_text().strip()))
        self._attach(name)

    def _attach(self, name: str) -> None:
        """Attach the device's disk (again, e.g. after the host rebooted) unless it is attached."""
        record = self.state.device(name)
        image = Path(record["image"])
        if record.get("loop") and dev.loop_backed_by(record["loop"], image):
            return
        self.state.update(lambda d: d["devices"][name].update(attaching=True))
        loop = dev.attach_partitioned(image, len(record["labels"]))
        self.state.update(lambda d: (d["devices"][name].update(loop=loop),
                                     d["devices"][name].pop("attaching", None)))

    def _start(self, name: str) -> None:
        self._attach(name)
        record = self.state.device(name)
        cfg = dev.SupplyConfig(name=name, loop=record["loop"], labels=record["labels"],
                               dev_dir=str(self.dev_dir(name)), netns=bool(record.get("netns")),
                               profile=record.get("profile", "ab"), kernel=record.get("kernel", ""),
                               port=int(record["port"]), forward_ports=self.service_ports(),
                               cgroup=flt.cgroup_name(name, int(record["port"])))
        self.state.update(lambda d: d["devices"][name].update(supply={"starting": True}))
        pid, start = dev.start_supply(cfg)
        self.state.update(lambda d: d["devices"][name].update(supply={"pid": pid, "start": start}))

    def _booted(self, name: str, since: int) -> bool:
        record = self.state.device(name)
        return dev.booted_ok(self.dev_dir(name), since) and ssh_banner(int(record["port"]))

    def _wait_booted(self, offsets: dict[str, int], timeout: float = BOOT_TIMEOUT) -> None:
        pending = dict(offsets)
        deadline = time.monotonic() + timeout
        while pending:
            for name, since in list(pending.items()):
                if self._booted(name, since):
                    del pending[name]
                elif self.power_state(name).get("state") == "dead":
                    raise LabError(f"{name} did not boot: its power supply gave up"
                                   f" (see {self.dev_dir(name) / 'console.log'})")
            if pending and time.monotonic() > deadline:
                first = sorted(pending)[0]
                tail = dev.console_text(self.dev_dir(first), pending[first]).strip().splitlines()[-3:]
                raise LabError(f"{len(pending)} device(s) not up after {timeout:.0f}s, e.g. {first}:"
                               f" {' | '.join(tail) or 'no console output'}")
            time.sleep(0.1)

    def write_inventory(self) -> None:
        devices = self.state.data["devices"]
        inventory.write_known_hosts(self.known_hosts, {
            name: (int(r["port"]), r["host_key"]) for name, r in devices.items() if r.get("host_key")})
        inventory.write_inventory(self.inventory, self.prefix, devices, key=self.key,
                                  known_hosts=self.known_hosts, catalog=self.catalog_path(),
                                  private=(self.state.data.get("services") or {}).get("private_registry"))

    # -- power
    def power_state(self, name: str) -> dict[str, Any]:
        return read_json(self.dev_dir(name) / "power.state", {}) or {}

    def supply_alive(self, name: str) -> bool:
        supply = self.state.device(name).get("supply") or {}
        return proc_alive(supply.get("pid"), supply.get("start"))

    def powercut(self, name: str) -> None:
        self.require()
        supply = self.state.device(name).get("supply") or {}
        if not kill_recorded(supply.get("pid"), supply.get("start"), signal.SIGTERM):
            raise LabError(f"{name}: its power supply is not running")
        wait_until(lambda: self.power_state(name).get("state") in ("off", "dead"), 10,
                   f"{name} to lose power")

    def poweron(self, name: str, timeout: float = BOOT_TIMEOUT) -> None:
        self.require()
        state = self.power_state(name).get("state")
        since = dev.console_size(self.dev_dir(name))
        self.mark_children()
        if not self.supply_alive(name):
            with self.locked():  # writes state.json: not while an up/down of the prefix runs
                self._start(name)
        elif state in ("off", "dead"):
            self._request_poweron(name)
        else:
            raise LabError(f"{name} is already powered on")
        self._wait_booted({name: since}, timeout)

    def boot_id(self, name: str) -> str | None:
        proc = self.ssh(name, "cat /proc/sys/kernel/random/boot_id", timeout=10)
        return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None

    def reboot(self, name: str, timeout: float = BOOT_TIMEOUT) -> str:
        """Run ``reboot`` on the device and wait for a new boot id; returns it."""
        self.require()
        old = self.boot_id(name)
        if old is None:
            raise LabError(f"{name} does not answer over SSH")
        since = dev.console_size(self.dev_dir(name))
        self.ssh(name, "reboot", timeout=15)
        new: list[str] = []

        def rebooted() -> bool:
            if not dev.booted_ok(self.dev_dir(name), since):
                return False
            current = self.boot_id(name)
            if current and current != old:
                new.append(current)
                return True
            return False

        wait_until(rebooted, timeout, f"{name} to reboot", interval=0.2)
        return new[-1]

    # -- the SSH link
    def link_rules(self, name: str) -> list[list[str]]:
        """The iptables rules (INPUT, on lo only) that cut the device's SSH port in both directions."""
        port = str(self.state.device(name)["port"])
        tag = ["-m", "comment", "--comment", f"osfleet-lab {self.prefix}/{name}"]
        return [["INPUT", "-i", "lo", "-p", "tcp", flag, port, *tag, "-j", "DROP"] for flag in ("--dport", "--sport")]

    def link(self, name: str, state: str) -> None:
        """Cut (``down``) or restore (``up``) the device's SSH link; the device keeps running.

        Packets to and from its host SSH port on lo are dropped, as on a cut cable: new connections
        time out and open sessions hang (nothing is refused or reset), while the device and
        everything it runs go on. ``down`` of the lab removes the rules too.
        """
        self.require()
        if state not in ("up", "down"):
            raise UsageError(f"labctl link: the state is up or down, not {state!r}")
        if shutil.which("iptables") is None:
            raise UsageError("labctl link needs iptables (see tests/lab/apt-packages.txt)")
        self.state.device(name)
        with self.locked():
            if state == "down":
                for rule in self.link_rules(name):
                    if run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
                        run(["iptables", "-w", "-I", *rule])
            else:
                self._link_up(name)
            self.state.update(lambda d: d["devices"][name].__setitem__("link", state))

    def _link_up(self, name: str) -> None:
        """Remove the device's link rules (each at most a few times: a rule added twice by hand)."""
        if shutil.which("iptables") is None:
            return
        for rule in self.link_rules(name):
            for _attempt in range(4):
                if run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
                    break
                run(["iptables", "-w", "-D", *rule])

    # -- faults (faults.py)
    def fault(self, name: str, kind: str) -> str:
        """``labctl fault NAME KIND|clear``: give the device a fault that makes its next host OS
        update fail (kept until cleared), or clear every fault it has; returns what was done."""
        self.require()
        self.state.device(name)
        if kind not in (*flt.KINDS, flt.CLEAR):
            raise UsageError(f"{name}: unknown fault kind {kind!r} (kinds: {', '.join(flt.KINDS)}; or {flt.CLEAR})")
        with self.locked():
            have: dict[str, Any] = dict(self.state.device(name).get("faults") or {})
            if kind == flt.CLEAR:
                return self._clear_faults(name, have)
            if kind in have:
                return f"{name}: has the fault {kind} already (since {have[kind].get('since')})"
            other = [k for k in flt.BOOT_KINDS if k in have and kind in flt.BOOT_KINDS]
            if other:
                raise UsageError(f"{name}: has the fault {other[0]} already, which breaks the next OS as {kind} would:"
                                 f" run labctl fault {name} clear first")
            detail = getattr(self, f"_fault_{kind}")(name)
            return f"{name}: fault {kind} set ({detail})"

    def _set_fault(self, name: str, kind: str, detail: dict[str, Any]) -> None:
        def change(d: dict[str, Any]) -> None:
            d["devices"][name].setdefault("faults", {})[kind] = {"since": now_iso(), **detail}
        self.state.update(change)
        flt.write_fault_file(self.dev_dir(name), self.state.device(name)["faults"])

    def _booted_root(self, name: str) -> str:
        ok = dev.last_boot_ok(dev.console_text(self.dev_dir(name)))
        if ok is None:
            raise LabError(f"{name}: cannot tell which root it runs: its last boot did not finish"
                           f" (power it on, see {self.dev_dir(name) / 'console.log'})")
        return ok[1]

    def _fault_health(self, name: str) -> str:
        root = self._booted_root(name)
        self._set_fault(name, "health", {"root": root})
        return f"every root but {root} boots with a failing health check"

    def _fault_boot(self, name: str) -> str:
        root = self._booted_root(name)
        self._set_fault(name, "boot", {"root": root})
        return f"every root but {root} boots with an init that exits at once"

    def _fault_registry(self, name: str) -> str:
        record = self.state.device(name)
        if shutil.which("iptables") is None:
            raise UsageError(f"{name}: labctl fault registry needs iptables (see tests/lab/apt-packages.txt)")
        if cgroup2_root() is None:
            raise UsageError(f"{name}: labctl fault registry needs a cgroup v2 hierarchy on the host (none is mounted)")
        supply = record.get("supply") or {}
        if not self.supply_alive(name):
            raise LabError(f"{name}: its power supply is not running (labctl poweron {name} first)")
        cgroup = flt.cgroup_name(name, int(record["port"]))
        found = proc_cgroup2(int(supply["pid"]))
        if found != f"/{cgroup}":
            raise LabError(f"{name}: its power supply runs in the cgroup {found!r}, not /{cgroup}"
                           " (started by an older labctl? labctl down and up again)")
        ports = self.service_ports()
        if not ports:
            raise LabError(f"{name}: the lab {self.prefix!r} has no services to cut it from")
        rules = flt.registry_rules(self.prefix, name, cgroup, ports)
        self._set_fault(name, "registry", {"cgroup": cgroup, "ports": ports, "rules": rules})
        for rule in rules:
            if run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
                run(["iptables", "-w", "-I", *rule])
        return f"its new connections to 127.0.0.1 ports {', '.join(map(str, ports))} are refused"

    def _fault_full(self, name: str) -> str:
        proc = self.ssh(name, flt.device_command(flt.FILL_SCRIPT, flt.FILLER, str(flt.FULL_LEAVE_MIB * 1024)), timeout=120)
        if proc.returncode != 0:
            raise LabError(f"{name}: cannot fill /mnt/data (exit {proc.returncode}):"
                           f" {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
        values = flt.parse_values(proc.stdout)
        detail = {"file": flt.FILLER, "size_kib": int(values["size_kib"]),
                  "free_kib_before": int(values["free_before"]), "free_kib": int(values["free_after"])}
        self._set_fault(name, "full", detail)
        return (f"{flt.FILLER} takes {detail['size_kib'] // 1024} MiB: {detail['free_kib'] // 1024} MiB free on"
                f" /mnt/data (was {detail['free_kib_before'] // 1024} MiB)")

    def _clear_faults(self, name: str, have: dict[str, Any]) -> str:
        """Undo every fault of the device; the filler first (it needs the device): when it cannot
        be removed nothing is cleared."""
        if not have:
            return f"{name}: has no fault"
        done = []
        if "full" in have:
            proc = self.ssh(name, flt.device_command(flt.UNFILL_SCRIPT, have["full"]["file"]), timeout=60)
            if proc.returncode != 0:
                raise LabError(f"{name}: cannot remove {have['full']['file']} (exit {proc.returncode}:"
                               f" {proc.stderr.strip()[-200:] or 'no output'}): no fault cleared")
            free = int(flt.parse_values(proc.stdout).get("free_after", 0))
            done.append(f"full ({free // 1024} MiB free on /mnt/data)")
        if "registry" in have:
            self._registry_rules_off(name)
            done.append("registry")
        done += [k for k in flt.BOOT_KINDS if k in have]
        self.state.update(lambda d: d["devices"][name].pop("faults", None))
        flt.write_fault_file(self.dev_dir(name), {})
        return f"{name}: cleared the faults {', '.join(done)}"

    def _registry_rules_off(self, name: str) -> None:
        """Remove the registry fault's rules (each at most a few times: a rule added twice by hand)."""
        if shutil.which("iptables") is None:
            return
        for rule in (self.state.device(name).get("faults") or {}).get("registry", {}).get("rules", []):
            for _attempt in range(4):
                if run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
                    break
                run(["iptables", "-w", "-D", *rule])

    def _reflashed_faults(self, name: str) -> None:
        """A reflash boots rootA from a new disk: the boot kinds now spare rootA, and the new data
        partition has no filler (``full`` goes)."""
        have = dict(self.state.device(name).get("faults") or {})
        if not have:
            return
        if have.pop("full", None) is not None:
            log(f"{name}: the new data partition has no filler: the fault full is gone")
        for kind in flt.BOOT_KINDS:
            if kind in have:
                have[kind] = {**have[kind], "root": "resin-rootA"}

        def change(d: dict[str, Any]) -> None:
            d["devices"][name].pop("faults", None)
            if have:
                d["devices"][name]["faults"] = have
        self.state.update(change)
        flt.write_fault_file(self.dev_dir(name), have)

    # -- status
    def status(self) -> list[dict[str, Any]]:
        self.require()
        names = sorted(self.state.data["devices"])
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self._device_status, names))

    def _device_status(self, name: str) -> dict[str, Any]:
        record = self.state.device(name)
        power = self.power_state(name)
        console = dev.console_text(self.dev_dir(name))
        match = dev.last_boot(console)[0]
        ok = dev.last_boot_ok(console)
        out: dict[str, Any] = {
            "device": name, "type": record["device_type"], "profile": record.get("profile", "ab"),
            "port": record["port"],
            "power": power.get("state", "unknown") if self.supply_alive(name) else "no-supply",
            "boots": power.get("boots", 0), "booted": match.group(2) if match else None,
            "os_version": ok[0] if ok else None, "root": ok[1] if ok else None,
            "boot_id": None, "running": False, "link": record.get("link", "up"),
            "fault": sorted(record.get("faults") or {}),
        }
        if out["power"] == "on" and out["link"] == "up" and ssh_banner(int(record["port"])):
            probe = self.ssh(name, inventory.STATUS_PROBE, timeout=15)
            if probe.returncode == 0:
                out.update(inventory.parse_status_probe(probe.stdout), running=True)
        return out

    # -- down
    def down(self) -> None:
        """Undo everything of the prefix, also after a crash halfway. Idempotent."""
        if not self.dir.exists():
            return
        with self.locked():
            dev_dirs = sorted(p for p in (self.dir / "devices").glob("*") if p.is_dir())
            for name in sorted(self.state.data["devices"]):
                if self.state.data["devices"][name].get("link") == "down":
                    self._link_up(name)
                if "registry" in (self.state.data["devices"][name].get("faults") or {}):
                    self._registry_rules_off(name)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self._stop_device, dev_dirs))
            services = self.state.data.get("services")
            if services:
                try:
                    _services().stop_services(services)
                except Exception as exc:  # noqa: BLE001  (the sweep below still stops them)
                    log(f"stopping the services failed ({exc}); killing what is left")
                self.state.update(lambda d: d.pop("services", None))
            for pid, start in stray_processes(self.dir):  # e.g. labctl died in start_services
                kill_recorded(pid, start, signal.SIGKILL)
                wait_gone(pid, start, 5)
            self._unmount_leftovers()
            for ddir in dev_dirs:
                self._detach_device(ddir)
            shutil.rmtree(self.dir)

    def _stop_device(self, ddir: Path) -> None:
        """Stop a device's power supply and make sure nothing of the device still runs."""
        record = self.state.data["devices"].get(ddir.name, {})
        power = read_json(ddir / "power.state", {}) or {}
        supplies = {(s.get("pid"), s.get("start")) for s in (record.get("supply") or {},)}
        supplies.add((power.get("supply_pid"), power.get("supply_start")))
        supplies |= set(find_supplies(ddir / "supply.json"))  # started but never recorded
        for pid, start in supplies:
            if kill_recorded(pid, start, signal.SIGINT) and not wait_gone(pid, start, 5):
                kill_recorded(pid, start, signal.SIGKILL)
                wait_gone(pid, start, 5)
        # the supply's children die with it (PDEATHSIG, --kill-child): make sure of it
        power = read_json(ddir / "power.state", {}) or {}
        kill_recorded(power.get("unshare_pid"), power.get("unshare_start"), signal.SIGKILL)
        if power.get("pidns"):
            sweep_pidns(int(power["pidns"]))
        if record.get("port"):
            remove_cgroup(flt.cgroup_name(ddir.name, int(record["port"])))

    def _unmount_leftovers(self) -> None:
        loops = {r.get("loop") for r in self.state.data["devices"].values() if r.get("loop")}
        for point in sorted(host_mounts_under(self.dir, loops), key=len, reverse=True):
            run(["umount", "-l", point], check=False)

    def _detach_device(self, ddir: Path) -> None:
        image = ddir / "disk.img"
        record = self.state.data["devices"].get(ddir.name, {})
        loops = set(dev.loops_of(image)) if image.exists() else set()
        if record.get("loop") and dev.loop_backed_by(record["loop"], image):
            loops.add(record["loop"])
        for loop in sorted(loops):
            dev.detach(loop, image)


def find_supplies(supply_json: Path) -> list[tuple[int, int]]:
    """(pid, start) of power supplies running with exactly this supply.json (ours by argv)."""
    return [(pid, start) for pid, start, argv in _processes()
            if argv[1:] == ["-m", "osfleet_lab.device", "supply", str(supply_json)]]


def stray_processes(lab_dir: Path) -> list[tuple[int, int]]:
    """Processes of a lab that nothing recorded (a labctl killed halfway may leave some).

    Every process that ``up``/``poweron`` starts (supplies, devices, registries, HTTP server)
    inherits ``OSFLEET_LAB_OWNER=<lab_dir>`` from labctl: the mark is exact, nothing else has it.
    """
    mark = f"{OWNER_ENV}={lab_dir}".encode()
    found = []
    for pid, start, _argv in _processes():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in environ:
            found.append((pid, start))
    return found


def _processes() -> Iterator[tuple[int, int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        start = proc_start_time(int(entry.name))
        if raw and start is not None:
            yield int(entry.name), start, raw.decode(errors="replace").split("\0")[:-1]


def sweep_pidns(inode: int) -> None:
    """SIGKILL every process still in the PID namespace ``inode`` (all of them are ours)."""
    for pid in pids_in_pidns(inode):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not pids_in_pidns(inode), 10, f"PID namespace {inode} to empty")


def remove_cgroup(cgroup: str, timeout: float = 5) -> None:
    """rmdir the device's cgroup once its processes are gone (retried while they exit)."""
    root = cgroup2_root()
    if root is None:
        return
    path = root / cgroup
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            path.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                log(f"cannot remove the cgroup {path}: {exc}")
                return
            time.sleep(0.1)


def pids_in_pidns(inode: int) -> list[int]:
    """Live (non-zombie) processes of a PID namespace; a zombie holds no mounts any more."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and dev.pidns_inode(int(entry.name)) == inode:
            if proc_start_time(int(entry.name)) is not None:
                pids.append(int(entry.name))
    return pids


def host_mounts_under(directory: Path, loops: set[str]) -> Iterator[str]:
    """Host mount points inside ``directory`` or whose source is one of ``loops``' partitions."""
    prefix = str(directory) + "/"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, point = line.split()[:2]
        point = point.encode().decode("unicode_escape")
        if point.startswith(prefix) or any(re.fullmatch(re.escape(lp) + r"(p\d+)?", source)
                                           for lp in loops):
            yield point


def exec_argv(lab: Lab, name: str, command: list[str]) -> list[str]:
    """ssh argv for ``labctl exec``: one argument is a shell command line, several an argv."""
    lab.require()
    record = lab.state.device(name)
    remote = command[0] if len(command) == 1 else shlex.join(command)
    return [*lab.ssh_argv(record), remote]
