# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``labctl fault NAME KIND|clear``: one device's next host OS update fails in a chosen way,
whatever release it updates to (docs/internals.md §4). The releases built with a fault
(releases.json ``lab_fault``: ``health``, ``boot``, and ``norollback``, whose rollback-health
never rolls back, os/faults/norollback) break one release for every device; these break one
device for every release.

Kinds (each is real: the collection meets a broken OS, a refused connection, a full disk):

* ``health``: every root but the one the device ran when the fault was set (``root``) boots with
  the ``balena-healthcheck`` of ``os/faults/health`` bind-mounted over its own by the bootloader,
  so the new OS's health check fails and it is rolled back; the running OS is untouched.
* ``boot``: the same with the ``/sbin/init`` of ``os/faults/boot``: the new OS cannot boot, the
  bootloader counts the boots and falls back (altboot); the running root boots as before.
* ``registry``: iptables REJECTs (TCP reset) every new TCP connection from the device's cgroup
  (device.py: each power supply and so each boot lives in ``osfleet-lab.<name>.<port>``) to the
  lab's service ports (registries, HTTP server), in the host's ``OUTPUT`` chain on ``lo``. SSH to
  the device, other devices and the host are untouched; a ``--netns`` device's traffic reaches the
  services through its supply (in the same cgroup), so the same rules cut it.
* ``full``: a file ``FILLER`` on ``/mnt/data`` (fallocate: no bytes written) leaves
  ``FULL_LEAVE_MIB`` free: less than any release, and less than the preflight's free-space margin.

Faults are recorded in ``state.json`` (``devices.<name>.faults``: kind -> what was made), shown by
``labctl status`` (``fault``), and stay until ``labctl fault NAME clear``, across reboots and
power cycles: a fault that made one update fail makes the next one fail too (nothing is
"consumed"). ``health`` and ``boot`` are also in ``devices/<name>/fault.env``, which the bootloader
reads at each boot. ``reflash`` (a new disk, booted from rootA) keeps them, for rootA; its new data
partition has no filler, so ``full`` goes. ``down`` removes the iptables rules.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from .device import FAULT_FILE
from .util import write_atomic

KINDS = ("health", "boot", "registry", "full")
CLEAR = "clear"
#: the kinds the bootloader applies (fault.env); they exclude each other (both break the new OS)
BOOT_KINDS = ("health", "boot")
#: the filler of ``full`` (on the device)
FILLER = "/mnt/data/osfleet-lab-fault.fill"
#: what ``full`` leaves free on /mnt/data: room for the run logs and the user application's
#: heartbeat, not for a release (>= 20 MiB) nor for the preflight's margin (64 MiB by default)
FULL_LEAVE_MIB = 8


def cgroup_name(name: str, port: int) -> str:
    """The device's cgroup v2 (flat, unique on the machine: SSH ports are)."""
    return f"osfleet-lab.{name}.{port}"


def registry_rules(prefix: str, name: str, cgroup: str, ports: list[int]) -> list[list[str]]:
    """The iptables rules (OUTPUT, on lo) that refuse the device's new connections to ``ports``."""
    tag = ["-m", "comment", "--comment", f"osfleet-lab {prefix}/{name} fault registry"]
    return [["OUTPUT", "-o", "lo", "-p", "tcp", "--syn", "-d", "127.0.0.1", "--dport", str(port),
             "-m", "cgroup", "--path", f"/{cgroup}", *tag, "-j", "REJECT", "--reject-with", "tcp-reset"]
            for port in ports]


def write_fault_file(dev_dir: Path, faults: dict[str, Any]) -> None:
    """devices/<name>/fault.env for the bootloader: the boot kinds set and the root they spare."""
    path = dev_dir / FAULT_FILE
    kinds = [k for k in BOOT_KINDS if k in faults]
    if not kinds:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, f"kinds={','.join(kinds)}\nroot={faults[kinds[0]]['root']}\n")


#: ``full`` on the device: $1 the filler, $2 KiB to leave free. Prints free_before= free_after= size_kib=
FILL_SCRIPT = r"""
set -u
f=$1 leave=$2
avail() { df -Pk /mnt/data | awk 'NR == 2 { print $4 }'; }
[ ! -e "$f" ] || { echo "$f exists already" >&2; exit 3; }
before=$(avail)
size=$((before - leave))
if [ "$size" -gt 0 ]; then
  fallocate -l "${size}k" "$f" || { rm -f "$f"; echo "fallocate of ${size} KiB failed" >&2; exit 1; }
else
  size=0; : >"$f" || exit 1
fi
sync
echo "free_before=$before"
echo "free_after=$(avail)"
echo "size_kib=$size"
"""

#: ``clear`` of ``full``: $1 the filler. Prints free_after=
UNFILL_SCRIPT = r"""
set -u
rm -f "$1" || exit 1
sync
echo "free_after=$(df -Pk /mnt/data | awk 'NR == 2 { print $4 }')"
"""


def device_command(script: str, *args: str) -> str:
    """One shell command line that runs ``script`` with ``args`` as $1.. (every value quoted)."""
    return shlex.join(["sh", "-c", script, "sh", *args])


def parse_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
