# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lab device: its disk image, its provisioning and its power supply.

Disk: a sparse GPT image (``sfdisk``) whose five filesystems are made *in the image file* with
``mkfs.ext4 -E offset=...`` (``-d`` populates boot/state/data from staging directories); rootA
is copied extent by extent from a pre-built ext4 image of the release root kept in the cache, and
the provisioning stamp is written into it with ``debugfs``. Nothing is mounted on the host.
The image is then attached with ``losetup -f --show`` + ``partx -a`` (this kernel parses no
partition tables itself).

Power supply: a detached (``setsid``) Python process per device, ``python -m osfleet_lab.device
supply <supply.json>``. It loops: start ``unshare -m -p -f -u --kill-child --mount-proc setpriv
--bounding-set ... bash bootloader.sh ...`` (CAP_SYS_BOOT stays: reboot(2) inside a PID namespace
only ends that namespace's init), wait for it and act on its exit status:
100/129 reboot, 101/130 power off, anything else is a crash and boots again, up to
``MAX_CRASH_BOOTS`` in a row, after which the device is "dead".
Signals: SIGTERM = power cut (SIGKILL the unshare: ``--kill-child`` then kills the whole
namespace at once, no sync, no cleanup inside; the supply stays, the device is off),
SIGINT = power cut and the supply exits; ``on`` written to ``power.ctl`` powers on.
Who kills whom: the supply starts unshare with PR_SET_PDEATHSIG=SIGKILL, unshare starts the
namespace init with --kill-child; so killing any link of supply -> unshare -> init (even with
SIGKILL) takes everything below it down. ``power.state`` records the PIDs and the PID-namespace
inode so that ``labctl down`` can verify that nothing is left. The supply first moves itself into
the device's own cgroup v2 (``osfleet-lab.<name>.<port>``, ``SupplyConfig.cgroup``), so every
process of every boot is in it (what ``labctl fault NAME registry`` matches, faults.py).

Files in ``devices/<name>/``: ``disk.img``, ``console.log`` (everything the device and its supply
print), ``power.state`` (JSON: state on/off/dead, boots, PIDs), ``power.ctl``, ``supply.json``,
``run/`` (mount points, private to each device's mount namespace), ``fault.env`` (the faults the
bootloader applies at each boot, written by ``labctl fault``; absent: none).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .util import (
    BOOTLOADER,
    LAB_PKG_DIR,
    LabError,
    file_lock,
    log,
    now_iso,
    cgroup2_root,
    proc_start_time,
    read_json,
    run,
    write_json,
)

T = TypeVar("T")
SECTOR = 512
GPT_TYPES = {
    "resin-boot": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system partition
}
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ROOT_LABELS = ("resin-rootA", "resin-rootB")
PART_LABELS = ("resin-boot", "resin-rootA", "resin-rootB", "resin-state", "resin-data")

REBOOT_CODES = (100, 129)  # init exits 100 / reboot(2) in the namespace = SIGHUP
OFF_CODES = (101, 130)  # init exits 101 / halt or poweroff(2) = SIGINT
MAX_CRASH_BOOTS = 20
CAPS_DROPPED = ("sys_time", "sys_module", "sys_rawio")
CAPS_DROPPED_HOST_NET = ("net_admin",)  # a device in the host netns must not touch its links

BOOT_RE = re.compile(r"^BOOT (\d+) root=(\S+) bootcount=(\d+) upgrade_available=(\d)$", re.M)
ALTBOOT_RE = re.compile(r"^ALTBOOT .*$", re.M)
# What the OS's /sbin/init (os/rootfs/sbin/init) prints once its services and sshd run.
BOOT_OK_RE = re.compile(r"^OSFLEET-BOOT-OK (\S+) (\S+)$", re.M)

ROLLBACK_HEALTH_CONF = "ROLLBACK_INITIAL_WAIT=2\nROLLBACK_INTERVAL=1\nROLLBACK_COUNT=3\n"
#: devices/<name>/fault.env: the faults the bootloader applies (``kinds=health,boot``, ``root=<label>``)
FAULT_FILE = "fault.env"


# --- disk ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    index: int  # 1-based
    label: str
    start: int  # sectors
    size: int  # sectors

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_kib(self) -> int:
        return self.size * SECTOR // 1024


def create_disk(image: Path, layout: list[tuple[str, int]], disk_mib: int = 0) -> list[Partition]:
    """Sparse GPT image with the given (label, size MiB) partitions, 1 MiB aligned, on a disk of
    ``disk_mib`` MiB (at least what the partitions need; the rest stays unpartitioned, as on a
    device whose eMMC is larger than its OS layout)."""
    total_mib = max(sum(part[1] for part in layout) + 2, disk_mib)  # primary GPT + alignment, backup GPT
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(total_mib * 1024 * 1024)
    lines = ["label: gpt"]
    for label, size in layout:
        lines.append(f'size={size}MiB, type={GPT_TYPES.get(label, LINUX_FS_TYPE)}, name="{label}"')
    # no re-read, no global sync(): it is a plain file (saves 0.3 s+ per disk)
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", image], input_text="\n".join(lines) + "\n")
    table = json.loads(run(["sfdisk", "-J", image]).stdout)["partitiontable"]["partitions"]
    return [
        Partition(i + 1, p["name"], int(p["start"]), int(p["size"])) for i, p in enumerate(table)
    ]


def mkfs(image: Path, part: Partition, content: Path | None = None) -> None:
    """ext4 labelled like the partition, made inside the image file at the partition's offset."""
    argv: list[str | os.PathLike[str]] = [
        "mkfs.ext4", "-q", "-F", "-L", part.label, "-E", f"offset={part.offset},nodiscard",
    ]
    if content is not None:
        argv += ["-d", content]
    run(argv + [image, f"{part.size_kib}k"])


def copy_extents(src: Path, dst: Path, offset: int, max_size: int) -> None:
    """Copy the data extents of sparse ``src`` into ``dst`` at ``offset`` (holes stay holes)."""
    size = src.stat().st_size
    if size > max_size:
        raise LabError(f"{src} ({size} bytes) does not fit its partition ({max_size} bytes)")
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            while start < end:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start,
                                       offset + start)
                if n == 0:
                    raise LabError(f"short copy from {src}")
                start += n
            pos = end


def debugfs_write(image: Path, part: Partition, src: Path, dest_name: str) -> None:
    """Write host file ``src`` as ``/dest_name`` into the filesystem of ``part`` (not mounted)."""
    if '"' in f"{src}{dest_name}":
        raise LabError(f"cannot pass {src} to debugfs (a double quote in the path)")
    proc = run(["debugfs", "-w", "-R", f'write "{src}" "{dest_name}"',
                f"{image}?offset={part.offset}"])
    if "Allocated inode" not in proc.stdout + proc.stderr:
        raise LabError(f"debugfs could not write {dest_name} into {part.label} of {image}")


def attach(image: Path) -> str:
    """losetup -f --show: the /dev/loopN now backed by ``image`` (partitions: add_partitions)."""
    loop = run(["losetup", "-f", "--show", image]).stdout.strip()
    if not re.fullmatch(r"/dev/loop\d+", loop):
        raise LabError(f"losetup returned {loop!r} for {image}")
    return loop


def loop_partitions(loop: str) -> list[str]:
    """The partitions the kernel holds for ``loop`` (``/sys/block/loopN/loopNpM``)."""
    name = Path(loop).name
    return sorted(p.name for p in Path(f"/sys/block/{name}").glob(f"{name}p*"))


def attach_partitioned(image: Path, count: int, tries: int = 8) -> str:
    """Attach ``image`` to a free loop device and add its ``count`` partitions; returns the loop.

    A loop device that was detached while its partitions existed (a crash, or a detach while
    busy) is free but keeps its partitions, and ``partx -a`` then fails with "error adding
    partitions". Such stale partitions are removed (``partx -d``; nothing can use the partitions
    of a free loop device); if they cannot be removed (still busy), that loop device is held
    while another one is tried, then released again.
    """
    held: list[str] = []
    try:
        for _attempt in range(tries):
            loop = attach(image)
            stale = loop_partitions(loop)
            if stale:
                run(["partx", "-d", loop], check=False)
                if loop_partitions(loop):
                    log(f"{loop} keeps stale partitions ({' '.join(stale)}) that cannot be"
                        " removed: trying another loop device")
                    held.append(loop)
                    continue
                log(f"{loop} had stale partitions ({' '.join(stale)}) from an earlier user:"
                    " removed them")
            add_partitions(loop, count)
            return loop
        raise LabError(f"no usable loop device for {image} after {tries} tries"
                       f" (each had stale partitions: {', '.join(held)})")
    finally:
        for loop in held:  # ours only while we held them: back to how we found them
            run(["losetup", "-d", loop], check=False)


def add_partitions(loop: str, count: int) -> None:
    run(["partx", "-a", loop])
    deadline = time.monotonic() + 10
    while not all(Path(f"{loop}p{i}").exists() for i in range(1, count + 1)):
        if time.monotonic() > deadline:
            raise LabError(f"partition nodes of {loop} did not appear")
        time.sleep(0.02)


def disk_table(image: Path) -> list[tuple[int, int]]:
    """(start, size) in sectors of each partition of the GPT on ``image``, in partition order;
    empty when the disk holds no readable partition table."""
    proc = run(["sfdisk", "-J", image], check=False)
    if proc.returncode != 0:
        return []
    try:
        table = json.loads(proc.stdout)["partitiontable"]["partitions"]
        return [(int(p["start"]), int(p["size"])) for p in table]
    except (ValueError, KeyError, TypeError):
        return []


def kernel_table(loop: str) -> list[tuple[int, int]]:
    """(start, size) in sectors of the partitions the kernel holds for ``loop``, in partition order."""
    name = Path(loop).name
    parts = []
    for node in sorted(Path(f"/sys/block/{name}").glob(f"{name}p*"), key=lambda q: int(q.name[len(name) + 1:])):
        parts.append((int((node / "start").read_text()), int((node / "size").read_text())))
    return parts


def sync_partitions(loop: str, image: Path, timeout: float = 10) -> str | None:
    """What a device's firmware does at power on: read the partition table from the disk. When the
    kernel's partitions of ``loop`` differ from the table on ``image`` (a whole-disk write, a
    reflash), they are dropped and added again (``partx``; retried while the last boot's mounts are
    still being released); the loop's size follows the file's, and no block cached before this
    power on is used again. Returns what changed, or None."""
    changed = []
    # a power cycle forgets every cached block: nothing read before a write through another path
    # (the disk file, the whole-disk node) survives into this boot
    nodes = [loop] + [f"/dev/{Path(n).name}" for n in sorted(Path(f"/sys/block/{Path(loop).name}").glob(f"{Path(loop).name}p*"))]
    run(["blockdev", "--flushbufs", *nodes], check=False)
    size = image.stat().st_size
    if int(Path(f"/sys/block/{Path(loop).name}/size").read_text()) * SECTOR != size:
        run(["losetup", "-c", loop])
        changed.append(f"disk size {size >> 20} MiB")
    want, have = disk_table(image), kernel_table(loop)
    if want == have:
        return "; ".join(changed) or None
    deadline = time.monotonic() + timeout
    while kernel_table(loop):
        run(["partx", "-d", loop], check=False)
        if not kernel_table(loop):
            break
        if time.monotonic() > deadline:
            raise LabError(f"cannot re-read the partition table of {loop}: its partitions are still busy")
        time.sleep(0.1)
    if want:
        add_partitions(loop, len(want))
    changed.append(f"partition table re-read: {len(want)} partitions" if want else "no partition table on the disk")
    return "; ".join(changed)


def detach(loop: str, image: Path) -> None:
    """partx -d + losetup -d of ``loop`` while it is backed by ``image``, retried while the
    kernel still releases a dead device's mounts. A loop number reused meanwhile by someone else's
    image is never touched."""
    deadline = time.monotonic() + 10
    while loop_backed_by(loop, image):
        parts = run(["partx", "-d", loop], check=False)
        if parts.returncode == 0 or not list(Path(f"/sys/block/{Path(loop).name}").glob("loop*p*")):
            if not loop_backed_by(loop, image):
                return
            run(["losetup", "-d", loop], check=False)
            if not loop_backed_by(loop, image):
                return
        if time.monotonic() > deadline:
            raise LabError(f"cannot detach {loop}: {parts.stderr.strip() or 'still busy'}")
        time.sleep(0.1)


def loop_backed_by(loop: str, image: Path) -> bool:
    """True when ``loop`` is attached to ``image`` (also if the image was deleted meanwhile)."""
    try:
        backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file").read_text().strip()
    except OSError:
        return False
    return backing in (str(image), f"{image} (deleted)")


def loops_of(image: Path) -> list[str]:
    """Loop devices attached to ``image`` (losetup -j)."""
    out = run(["losetup", "-j", image], check=False).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.startswith("/dev/loop")]


# --- release root image (cache) --------------------------------------------------------------

def root_image(cache_dir: Path, rootfs: Path, key: str, size_mib: int) -> Path:
    """ext4 image (label resin-rootA) of a release root, built once per release and size."""
    images = cache_dir / "root-images"
    image = images / f"{key}-{size_mib}M.ext4"
    if image.exists():
        return image
    with file_lock(images / ".lock", "the root image cache"):
        if image.exists():
            return image
        with tempfile.TemporaryDirectory(dir=images) as tmp:
            src = rootfs
            if rootfs.is_file():  # a tar of the root
                src = Path(tmp) / "root"
                src.mkdir()
                with tarfile.open(rootfs) as tar:
                    tar.extractall(src, filter="fully_trusted")
            part = Partition(2, "resin-rootA", 0, size_mib * 1024 * 1024 // SECTOR)
            building = Path(tmp) / "image.ext4"
            building.touch()
            mkfs(building, part, src)
            os.replace(building, image)
        prune_root_images(cache_dir)
    return image


def prune_root_images(cache_dir: Path) -> None:
    """Drop root images of builds that are gone from the cache (names start with the build key)."""
    keys = {p.name.removeprefix("build-") for p in cache_dir.glob("build-*")}
    for image in (cache_dir / "root-images").glob("*.ext4"):
        if image.name.split("-", 1)[0] not in keys:
            image.unlink(missing_ok=True)


# --- provisioning ----------------------------------------------------------------------------

@dataclass
class Provision:
    """Everything a new device's disk needs (see docs/internals.md §2)."""

    name: str
    device_type: str
    version: str
    stamp: str  # text of /.osfleet-release.json (releases.release_stamp)
    port: int  # the port the device's sshd listens on (lab/device.env)
    root_image: Path
    rootfs: Path  # the release root (dir or tar): /resin-boot and supervisor.conf come from it
    host_key: Path  # private key; .pub beside it
    authorized_key: Path
    layout: list[tuple[str, int]]
    extra_boot: dict[str, str] = field(default_factory=dict)
    profile: str = "ab"  # ab: rootA is the OS root; balenaos: rootA holds the release's hostapp
    disk_mib: int = 0  # the disk's size (0: just what the layout needs)


def _read_from_root(rootfs: Path, rel: str) -> dict[str, bytes]:
    """Files under ``rel`` (a path inside the release root) -> {relative path: content}."""
    out: dict[str, bytes] = {}
    if rootfs.is_dir():
        base = rootfs / rel
        if base.is_file():
            return {"": base.read_bytes()}
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(base))] = path.read_bytes()
        return out
    with tarfile.open(rootfs) as tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./")
            if member.isfile() and (name == rel or name.startswith(rel + "/")):
                data = tar.extractfile(member)
                if data is not None:
                    out[name[len(rel) + 1:] if name != rel else ""] = data.read()
    return out


def _write_tree(base: Path, files: dict[str, bytes | str], mode: int = 0o644) -> None:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        path.chmod(mode)


def stage_boot(p: Provision, dest: Path) -> None:
    payload = _read_from_root(p.rootfs, "resin-boot")
    if not payload:
        raise LabError(f"release {p.device_type} {p.version} has no /resin-boot payload")
    _write_tree(dest, dict(payload))
    config = {
        "uuid": os.urandom(16).hex(),
        "deviceType": p.device_type,
        "hostname": p.name,
        "apiKey": os.urandom(16).hex(),
        "developmentMode": False,
        "persistentLogging": False,
        "localMode": False,
        # balenaOS installs these as root's authorized keys (the lab's first boot on a fresh state
        # partition does, os/rootfs/sbin/init): the key that survives a whole-disk write
        "os": {"sshKeys": [p.authorized_key.read_text().strip()]},
    }
    release_config_txt = payload.get("config.txt", b"").decode(errors="replace")
    _write_tree(dest, {
        "config.json": json.dumps(config, indent=2) + "\n",
        "resinOS_uEnv.txt": "resin_root_part=2\nupgrade_available=0\n",
        # user customisations that an update must keep back (hostos-update-facts §6.3)
        "config.txt": release_config_txt.rstrip("\n")
        + ("\n" if release_config_txt else "")
        + f"# user customisation ({p.name})\ngpu_mem=128\ndtoverlay=osfleet-lab-user\n",
        "extra_uEnv.txt": "extra_os_cmdline=osfleet_lab_user=1\n",
        **p.extra_boot,
    })


def stage_state(p: Provision, dest: Path) -> None:
    ssh = dest / "ssh"
    ssh.mkdir(parents=True, mode=0o700)
    (ssh / "ssh_host_ed25519_key").write_bytes(p.host_key.read_bytes())
    (ssh / "ssh_host_ed25519_key").chmod(0o600)
    (ssh / "ssh_host_ed25519_key.pub").write_bytes(Path(f"{p.host_key}.pub").read_bytes())
    (ssh / "authorized_keys").write_bytes(p.authorized_key.read_bytes())
    (ssh / "authorized_keys").chmod(0o600)
    _write_tree(dest, {
        "lab/device.env": f"LAB_SSH_PORT={p.port}\nLAB_SSH_ADDR=127.0.0.1\nLAB_DEVICE={p.name}\n",
        "rollback-health.conf": ROLLBACK_HEALTH_CONF,
    })
    overlay = dest / "root-overlay"
    for sub in ("etc/balena-supervisor", "etc/hostname.d", "home/root/.ssh", "var/lib"):
        (overlay / sub).mkdir(parents=True, exist_ok=True)
    supervisor = _read_from_root(p.rootfs, "etc/balena-supervisor/supervisor.conf").get("")
    if supervisor is not None:
        _write_tree(overlay, {"etc/balena-supervisor/supervisor.conf": supervisor})
    (dest / "osfleet").mkdir()


def stage_data(dest: Path, profile: str = "ab") -> None:
    subs = ("user-app", "balenahup", "balena-supervisor", "docker")
    if profile == "balenaos":  # the supervisor's data dir of a balenaOS data partition
        subs += ("resin-data",)
    for sub in subs:
        (dest / sub).mkdir(parents=True)


def build_disk(image: Path, p: Provision) -> list[Partition]:
    """Create and fill the whole disk image of a new device (no loop device, no mount)."""
    parts = {part.label: part for part in create_disk(image, p.layout, p.disk_mib)}
    missing = [label for label in PART_LABELS if label not in parts]
    if missing:
        raise LabError(f"layout of {p.device_type} {p.version} lacks {', '.join(missing)}")
    with tempfile.TemporaryDirectory(dir=image.parent, prefix=".stage-") as tmp:
        stage = Path(tmp)
        for label, fill in (("resin-boot", lambda d: stage_boot(p, d)),
                            ("resin-state", lambda d: stage_state(p, d)),
                            ("resin-data", lambda d: stage_data(d, p.profile))):
            dest = stage / label
            dest.mkdir()
            fill(dest)
            mkfs(image, parts[label], dest)
        root_a = parts["resin-rootA"]
        copy_extents(p.root_image, image, root_a.offset, root_a.size * SECTOR)
        stamp_file = stage / "stamp.json"
        stamp_file.write_text(p.stamp)
        debugfs_write(image, root_a, stamp_file, ".osfleet-release.json")
        mkfs(image, parts["resin-rootB"])
    return sorted(parts.values(), key=lambda part: part.index)


# --- network namespace mode ------------------------------------------------------------------
# With --netns each boot gets a new network namespace holding only its loopback. The supply
# forwards host 127.0.0.1:<port> to the device's 127.0.0.1:22222 (balenaOS's SSH port) and, in
# the device, 127.0.0.1:<service port> to the host's, so the catalog's URLs work unchanged and
# all traffic stays on 127.0.0.0/8.

NETNS_SSH_PORT = 22222
_CLONE_NEWNET = 0x40000000


def in_netns(netns: int | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that first joins network namespace ``netns`` (None: ours).

    Sockets keep the namespace they were created in, so they can be used from any thread.
    """
    if netns is None:
        return fn()
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            os.setns(netns, _CLONE_NEWNET)
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller)
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 2
    while True:  # the previous boot's listener may take a moment to go
        try:
            sock.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.05)
    sock.listen(16)
    sock.settimeout(0.5)
    return sock


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Tunnel:
    """Listen on 127.0.0.1:listen_port in one netns, connect each client to 127.0.0.1:target_port
    in another; a thread per direction and connection (a lab has few connections)."""

    def __init__(self, listen_ns: int | None, listen_port: int, target_ns: int | None,
                 target_port: int) -> None:
        self.sock = in_netns(listen_ns, lambda: _listen(listen_port))
        self.target_ns = os.dup(target_ns) if target_ns is not None else None
        self.target_port = target_port
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn = self.sock.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            upstream = in_netns(self.target_ns, lambda: socket.create_connection(
                ("127.0.0.1", self.target_port), timeout=5))
        except OSError:
            conn.close()
            return
        conn.settimeout(None)
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join()
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # stop listening now, not when accept() returns
        except OSError:
            pass
        self.sock.close()
        if self.target_ns is not None:
            os.close(self.target_ns)
            self.target_ns = None


# --- power supply ----------------------------------------------------------------------------

@dataclass
class SupplyConfig:
    name: str
    loop: str
    labels: list[str]
    dev_dir: str
    netns: bool = False
    profile: str = "ab"  # ab | balenaos (bootloader.sh)
    kernel: str = ""  # the kernel's file name (balenaos: looked up through the partition's boot link)
    port: int = 0  # host SSH port (netns mode: forwarded to the device's NETNS_SSH_PORT)
    forward_ports: list[int] = field(default_factory=list)  # host services seen by the device
    cgroup: str = ""  # the device's cgroup v2, relative to the hierarchy's root ("": none)

    @property
    def dir(self) -> Path:
        return Path(self.dev_dir)

    def save(self) -> None:
        write_json(self.dir / "supply.json", asdict(self))

    @classmethod
    def load(cls, path: Path) -> SupplyConfig:
        return cls(**json.loads(path.read_text()))


def boot_argv(cfg: SupplyConfig, boot_no: int) -> list[str]:
    """The command line of one boot. ``-p`` is not optional: see the SAFETY rules.

    The first setpriv makes unshare die with the supply (PR_SET_PDEATHSIG survives exec), the
    second one drops capabilities from the device (CAP_SYS_BOOT stays: see lab-facts).
    """
    dropped = CAPS_DROPPED + (() if cfg.netns else CAPS_DROPPED_HOST_NET)
    argv = ["setpriv", "--pdeathsig", "KILL",
            "unshare", "-m", "-p", "-f", "-u", "--kill-child", "--mount-proc"]
    if cfg.netns:
        argv.append("-n")
    return argv + [
        "setpriv", "--bounding-set", ",".join(f"-{cap}" for cap in dropped),
        "bash", str(BOOTLOADER), cfg.name, cfg.loop, str(cfg.dir / "run"), str(boot_no),
        "1" if cfg.netns else "0", cfg.profile, cfg.kernel or "-",
        str(NETNS_SSH_PORT if cfg.netns else cfg.port), str(cfg.dir / FAULT_FILE), *cfg.labels,
    ]


def pidns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def namespace_init(unshare_pid: int, timeout: float = 2.0) -> int | None:
    """PID (host view) of the namespace init that ``unshare --fork`` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        except OSError:
            return None
        if children:
            return int(children[0])
        time.sleep(0.01)
    return None


class PowerSupply:
    def __init__(self, cfg: SupplyConfig) -> None:
        self.cfg = cfg
        self.console = cfg.dir / "console.log"
        self.state_file = cfg.dir / "power.state"
        self.ctl = cfg.dir / "power.ctl"
        prev = read_json(self.state_file, {}) or {}
        self.boots = int(prev.get("boots", 0))
        self.want = "on"  # on | off | dead | exit
        self.child: subprocess.Popen[bytes] | None = None
        self.crash_streak = 0
        self.info: dict[str, Any] = {}

    # -- bookkeeping
    def say(self, msg: str) -> None:
        with open(self.console, "a") as fh:
            fh.write(f"[power {now_iso()}] {msg}\n")

    def write_state(self, state: str) -> None:
        write_json(self.state_file, {
            "state": state, "boots": self.boots, "crash_streak": self.crash_streak,
            "supply_pid": os.getpid(), "supply_start": proc_start_time(os.getpid()),
            "updated_at": now_iso(), **self.info,
        })

    # -- signals
    def _cut(self) -> None:
        if self.child is not None and self.child.returncode is None:
            try:
                self.child.kill()  # SIGKILL unshare: --kill-child takes the namespace down
            except ProcessLookupError:
                pass

    def on_term(self, _sig: int, _frame: Any) -> None:
        if self.want == "on":
            self.want = "off"
        self._cut()

    def on_int(self, _sig: int, _frame: Any) -> None:
        self.want = "exit"
        self._cut()

    # -- main loop
    def join_cgroup(self) -> None:
        """Move the supply into the device's cgroup v2: each boot (unshare and everything below it)
        inherits it. Without a cgroup v2 mount the device runs as before (no registry fault)."""
        root = cgroup2_root()
        if not self.cfg.cgroup or root is None:
            self.say("no cgroup v2 hierarchy on the host: the device has no cgroup of its own")
            return
        path = root / self.cfg.cgroup
        try:
            path.mkdir(exist_ok=True)
            (path / "cgroup.procs").write_text(f"{os.getpid()}\n")
        except OSError as exc:
            self.say(f"cannot join the cgroup {path}: {exc}")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_int)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.say(f"supply started (pid {os.getpid()})")
        self.join_cgroup()
        while self.want != "exit":
            if self.want == "on":
                self.boot_once()
            else:
                self.write_state(self.want)
                self.wait_for_poweron()
        self.info = {}
        self.write_state("off")
        self.say("supply stopped")
        return 0

    def wait_for_poweron(self) -> None:
        """Poll power.ctl (every 0.2 s) while the power is off."""
        while self.want in ("off", "dead"):
            try:
                request = self.ctl.read_text().strip()
            except FileNotFoundError:
                request = ""
            if request == "on":
                self.want = "on"
                self.crash_streak = 0
                self.write_state("on")  # before the request goes: whoever made it waits for that
                self.ctl.unlink(missing_ok=True)
                self.say("POWER ON")
                return
            if request:
                self.ctl.unlink(missing_ok=True)
            time.sleep(0.2)

    def open_tunnels(self, init: int) -> list[Tunnel]:
        """netns mode: host 127.0.0.1:port -> device :22222, device 127.0.0.1:P -> host :P."""
        try:
            netns = os.open(f"/proc/{init}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.say(f"no network namespace to forward into: {exc}")
            return []
        tunnels: list[Tunnel] = []
        try:
            tunnels.append(Tunnel(None, self.cfg.port, netns, NETNS_SSH_PORT))
            tunnels += [Tunnel(netns, port, None, port) for port in self.cfg.forward_ports]
        except OSError as exc:
            self.say(f"cannot forward ports: {exc}")
        finally:
            os.close(netns)  # the sockets keep the namespace; the tunnels keep their own fd
        return tunnels

    def boot_once(self) -> None:
        self.boots += 1
        (self.cfg.dir / "run").mkdir(exist_ok=True)
        # the firmware reads the partition table from the disk at each power on (a whole-disk
        # write or a reflash since the last boot gives a new one); a disk without one does not boot
        try:
            changed = sync_partitions(self.cfg.loop, self.cfg.dir / "disk.img")
        except (LabError, OSError) as exc:
            changed = f"cannot read the disk: {exc}"
        if changed:
            self.say(f"FIRMWARE {changed}")
        with open(self.console, "ab") as out:
            self.child = subprocess.Popen(
                boot_argv(self.cfg, self.boots), stdin=subprocess.DEVNULL, stdout=out,
                stderr=out, close_fds=True,
            )
        pid = self.child.pid
        if self.want != "on":
            self._cut()
        init = namespace_init(pid)
        self.info = {
            "unshare_pid": pid, "unshare_start": proc_start_time(pid),
            "pidns": pidns_inode(init) if init else None,
        }
        self.write_state("on")
        tunnels = self.open_tunnels(init) if self.cfg.netns and init else []
        try:
            rc = self.child.wait()
        finally:
            for tunnel in tunnels:
                tunnel.close()
        self.child = None
        rc = 128 - rc if rc < 0 else rc
        if self.want != "on":
            self.settle(f"POWER CUT (boot {self.boots})")
        elif rc in REBOOT_CODES:
            self.crash_streak = 0
            self.settle(f"REBOOT (exit {rc})")
        elif rc in OFF_CODES:
            self.crash_streak = 0
            self.want = "off"
            self.settle(f"POWER OFF (exit {rc})")
        else:
            self.crash_streak += 1
            if self.crash_streak >= MAX_CRASH_BOOTS:
                self.want = "dead"
            self.settle(f"CRASH exit {rc} ({self.crash_streak}/{MAX_CRASH_BOOTS} in a row)")
            if self.want == "dead":
                self.say(f"DEAD: {MAX_CRASH_BOOTS} crash boots in a row, power stays off")
            else:
                time.sleep(0.2)

    def settle(self, event: str) -> None:
        """After a boot ended: power.state first, then the console line (readers wait for it)."""
        self.info = {}
        self.write_state({"on": "on", "dead": "dead"}.get(self.want, "off"))
        self.say(event)


def start_supply(cfg: SupplyConfig) -> tuple[int, int]:
    """Start the detached power supply of a device; returns (pid, start time)."""
    cfg.save()
    (cfg.dir / "power.ctl").unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(LAB_PKG_DIR.parent))
    with open(cfg.dir / "console.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "osfleet_lab.device", "supply", str(cfg.dir / "supply.json")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True,
            start_new_session=True, cwd="/", env=env,
        )
    start = proc_start_time(proc.pid)
    if start is None:
        raise LabError(f"power supply of {cfg.name} exited at once (see its console.log)")
    return proc.pid, start


# --- console ---------------------------------------------------------------------------------

def console_text(dev_dir: Path, since: int = 0) -> str:
    try:
        with open(dev_dir / "console.log", "rb") as fh:
            fh.seek(since)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def console_size(dev_dir: Path) -> int:
    try:
        return (dev_dir / "console.log").stat().st_size
    except FileNotFoundError:
        return 0


def last_boot(text: str) -> tuple[re.Match[str] | None, str]:
    """The last BOOT line of a console text and everything after it."""
    matches = list(BOOT_RE.finditer(text))
    if not matches:
        return None, ""
    last = matches[-1]
    return last, text[last.end():]


def booted_ok(dev_dir: Path, since: int) -> bool:
    """True when the console shows, after offset ``since``, a BOOT line followed by BOOT-OK."""
    match, after = last_boot(console_text(dev_dir, since))
    return match is not None and BOOT_OK_RE.search(after) is not None


def last_boot_ok(text: str) -> tuple[str, str] | None:
    """(OS version, root label) of the last boot that reached BOOT-OK, if the last boot did."""
    after = last_boot(text)[1]
    found = BOOT_OK_RE.search(after)
    return (found.group(1), found.group(2)) if found else None


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "supply":
        return PowerSupply(SupplyConfig.load(Path(argv[1]))).run()
    print("usage: python -m osfleet_lab.device supply SUPPLY_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
