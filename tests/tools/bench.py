# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`make bench`: time the virtual device lab and print the results as JSON on stdout.

For each fleet size it times ``labctl up``, ``labctl status`` and ``labctl down`` on a prefix of
its own (``bench<N>``), then the standard update of a 3-device fleet (``osfleet.hup.update``:
2.88.4 to 2.113.0 from full images, to 2.114.1 from deltas, and a run with nothing to do); the
fleet is always taken down again, also when a step fails. The output of
labctl goes to stderr, so stdout holds only the JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LABCTL = REPO_ROOT / "tests" / "lab" / "labctl"
FLEET_SIZES = (1, 10)


class BenchError(Exception):
    """A benchmark step failed."""


def labctl(*args: str) -> float:
    """Run labctl with the arguments, its output on stderr; return its wall time in seconds."""
    start = time.monotonic()
    completed = subprocess.run([str(LABCTL), *args], stdin=subprocess.DEVNULL, stdout=sys.stderr, check=False)
    elapsed = time.monotonic() - start
    if completed.returncode != 0:
        raise BenchError(f"labctl {' '.join(args)} failed with exit code {completed.returncode}")
    return round(elapsed, 3)


def bench_lab(devices: int) -> dict[str, Any]:
    """Time bringing up, querying and taking down a lab fleet of the given size."""
    prefix = f"bench{devices}"
    if (REPO_ROOT / "build" / "lab" / prefix / "state.json").exists():
        labctl("down", "--prefix", prefix)
    result: dict[str, Any] = {"devices": devices, "prefix": prefix}
    try:
        result["up_s"] = labctl("up", "--devices", str(devices), "--prefix", prefix)
        result["status_s"] = labctl("status", "--prefix", prefix)
    finally:
        result["down_s"] = labctl("down", "--prefix", prefix)
    return result


def playbook(inventory: Path, target: str, **extra: Any) -> float:
    """Run osfleet.hup.update on the lab fleet to ``target``; return its wall time in seconds."""
    start = time.monotonic()
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), "osfleet.hup.update",
         "-e", json.dumps({"hup_target_version": target, **extra})],
        stdin=subprocess.DEVNULL, stdout=sys.stderr, check=False,
    )
    elapsed = time.monotonic() - start
    if completed.returncode != 0:
        raise BenchError(f"ansible-playbook osfleet.hup.update to {target} failed with exit code {completed.returncode}")
    return round(elapsed, 3)


def bench_update(devices: int = 3) -> dict[str, Any]:
    """Time the standard update of a lab fleet: 2.88.4 -> 2.113.0 (full image), then -> 2.114.1
    (delta), then the same again (nothing to do)."""
    prefix = "benchupd"
    if (REPO_ROOT / "build" / "lab" / prefix / "state.json").exists():
        labctl("down", "--prefix", prefix)
    inventory = REPO_ROOT / "build" / "lab" / prefix / "inventory.yml"
    result: dict[str, Any] = {"devices": devices, "prefix": prefix, "from": "2.88.4"}
    try:
        labctl("up", "--devices", str(devices), "--prefix", prefix, "--os", "2.88.4")
        result["to_2.113.0_full_image_s"] = playbook(inventory, "2.113.0", hup_sources=["registry", "fallback"])
        result["to_2.114.1_delta_s"] = playbook(inventory, "2.114.1")
        result["to_2.114.1_again_nothing_to_do_s"] = playbook(inventory, "2.114.1")
    finally:
        result["down_s"] = labctl("down", "--prefix", prefix)
    return result


def host_info() -> dict[str, Any]:
    """Describe the machine the numbers were taken on."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    """Run every benchmark and print one JSON document."""
    if not os.access(LABCTL, os.X_OK):
        print(f"bench: {LABCTL} is missing or not executable: the lab is not there yet", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"benchmark": "osfleet.hup", "host": host_info(), "lab": []}
    status = 0
    for devices in FLEET_SIZES:
        try:
            report["lab"].append(bench_lab(devices))
        except BenchError as error:
            report["lab"].append({"devices": devices, "error": str(error)})
            status = 1
    try:
        report["update"] = bench_update()
    except BenchError as error:
        report["update"] = {"error": str(error)}
        status = 1
    print(json.dumps(report, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
