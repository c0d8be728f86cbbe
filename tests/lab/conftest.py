# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the lab's own tests: labs with unique prefixes that are ALWAYS taken down.

Run as root: ``.venv/bin/python -m pytest tests/lab``. Devices are reached directly with paramiko
(the lab key and the lab's own known_hosts), and the CLI is driven as a user would drive it.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

HERE = Path(__file__).resolve().parent
LABCTL = HERE / "labctl"
sys.path.insert(0, str(HERE))

from osfleet_lab.inventory import STATUS_PROBE, parse_status_probe  # noqa: E402
from osfleet_lab.util import LAB_DIR  # noqa: E402


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab tests need root (loop devices, namespaces)")


#: the lab tests were written for the generic A/B profile; a test of the balenaos profile says
#: --profile balenaos (labctl's own default is balenaos)
LAB_TEST_PROFILE = "ab"


def labctl(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OSFLEET_LAB_PROFILE": os.environ.get("OSFLEET_LAB_PROFILE") or LAB_TEST_PROFILE}
    proc = subprocess.run([str(LABCTL), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"labctl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def unique_prefix(tag: str) -> str:
    return f"t{tag}{secrets.token_hex(3)}"


@dataclass
class Device:
    name: str
    port: int
    lab: LabHandle

    def client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.lab.dir / "known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect("127.0.0.1", port=self.port, username="root",
                       key_filename=str(self.lab.dir / "id_ed25519"), look_for_keys=False,
                       allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
        return client

    def run(self, command: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run a shell command on the device (raw, like Ansible's raw module)."""
        with self.client() as client:
            stdout, stderr = client.exec_command(command, timeout=timeout)[1:]
            out = stdout.read().decode()
            err = stderr.read().decode()
            return stdout.channel.recv_exit_status(), out, err

    def check(self, command: str, timeout: float = 60) -> str:
        rc, out, err = self.run(command, timeout)
        assert rc == 0, f"{self.name}: {command!r} exited {rc}: {err.strip()}"
        return out

    def booted_root(self) -> str:
        """The running root's label, from /proc/mounts and by-partlabel (internals §2)."""
        return str(parse_status_probe(self.check(STATUS_PROBE))["root"])

    def boot_id(self) -> str:
        return self.check("cat /proc/sys/kernel/random/boot_id").strip()

    def console(self) -> str:
        return (self.lab.dir / "devices" / self.name / "console.log").read_text(errors="replace")


def try_run(dev: Device, command: str, timeout: float = 10) -> str | None:
    """A device command's stdout, or None when it failed or the device did not answer (rebooting)."""
    try:
        rc, out, _err = dev.run(command, timeout=timeout)
    except Exception:  # noqa: BLE001  (device rebooting: ssh refused or cut)
        return None
    return out if rc == 0 else None


def wait_for(dev: Device, command: str, expect: str, timeout: float) -> str:
    """Poll a device command until its output contains ``expect`` (bounded)."""
    deadline = time.monotonic() + timeout
    out = None
    while time.monotonic() < deadline:
        out = try_run(dev, command)
        if out is not None and expect in out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"{dev.name}: {command!r} never showed {expect!r} (last: {out!r});"
                         f" console tail:\n{dev.console()[-2500:]}")


@dataclass
class LabHandle:
    prefix: str
    inventory: Path

    @property
    def dir(self) -> Path:
        return LAB_DIR / self.prefix

    def state(self) -> dict:
        return json.loads((self.dir / "state.json").read_text())

    def devices(self) -> list[Device]:
        devices = self.state()["devices"]
        return [Device(name, int(devices[name]["port"]), self) for name in sorted(devices)]

    def labctl(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """labctl SUBCOMMAND --prefix P ARGS... (before the args: exec takes the rest verbatim)."""
        return labctl(args[0], "--prefix", self.prefix, *args[1:], check=check, timeout=timeout)


def bring_up(prefix: str, count: int, *extra: str) -> LabHandle:
    proc = labctl("up", "--devices", str(count), "--prefix", prefix, *extra, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"labctl up --prefix {prefix} failed:\n{proc.stderr}")
    inventory = Path(proc.stdout.strip().splitlines()[-1])
    return LabHandle(prefix, inventory)


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    """A 4-device lab shared by the tests; each test that changes a device uses its own one."""
    prefix = unique_prefix("m")
    try:
        yield bring_up(prefix, 4)
    finally:
        labctl("down", "--prefix", prefix, check=False)


@pytest.fixture
def lab_factory() -> Iterator[object]:
    """bring_up(count, *extra) -> LabHandle with a fresh prefix; all are taken down afterwards."""
    prefixes: list[str] = []

    def make(count: int, *extra: str) -> LabHandle:
        prefix = unique_prefix("f")
        prefixes.append(prefix)
        return bring_up(prefix, count, *extra)

    try:
        yield make
    finally:
        for prefix in prefixes:
            labctl("down", "--prefix", prefix, check=False)
