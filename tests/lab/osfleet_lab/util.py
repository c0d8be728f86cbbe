# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small shared helpers of the lab: errors, paths, commands, atomic files, locks, waits, PIDs.

Everything here is host-side and stdlib-only. Device code lives in ``device.py``, the lab
lifecycle in ``lab.py``, the command line in ``cli.py``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
LAB_PKG_DIR = Path(__file__).resolve().parent
LAB_DIR = Path(os.environ.get("OSFLEET_LAB_DIR", REPO_ROOT / "build" / "lab")).resolve()
CACHE_DIR = LAB_DIR / "cache"
BOOTLOADER = LAB_PKG_DIR / "bootloader.sh"
TRACE = os.environ.get("OSFLEET_LAB_TRACE") == "1"  # log every command with its duration


class LabError(Exception):
    """An error to report to the user as one line (exit status 1)."""

    exit_code = 1


class UsageError(LabError):
    """Bad input or a missing host feature: one line on stderr, exit status 2, nothing made."""

    exit_code = 2


def log(msg: str) -> None:
    """Progress line on stderr (stdout is reserved for results such as the inventory path)."""
    print(f"labctl: {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input_text: str | None = None,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command without a shell; on failure raise LabError naming the command and its stderr."""
    args = [os.fspath(a) for a in argv]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            args, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"command timed out after {timeout}s: {shlex.join(args)}") from exc
    if TRACE:
        log(f"{time.monotonic() - started:.3f}s rc={proc.returncode} {shlex.join(args)}")
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = detail[-1] if detail else "no output"
        raise LabError(f"{shlex.join(args)} failed (exit {proc.returncode}): {last}")
    return proc


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write a file through a temporary file in the same directory and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def file_lock(path: Path, what: str, timeout: float = 300) -> Iterator[None]:
    """Exclusive flock on ``path``; waits up to ``timeout`` seconds for another holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"{what} is locked by another labctl ({path})") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate`` until true; bounded by ``timeout``; raise LabError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- processes -------------------------------------------------------------------------------

def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a process, or None if it does not exist.

    Recorded next to every PID we start so that a later kill never hits a recycled PID.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: the fields after the last ')' are fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def proc_alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and start is not None and proc_start_time(int(pid)) == start  # type: ignore[arg-type]


def kill_recorded(pid: int | None, start: int | None, sig: int = signal.SIGKILL) -> bool:
    """Signal a process we started, identified by PID *and* start time. True if signalled."""
    if not proc_alive(pid, start):
        return False
    try:
        os.kill(int(pid), sig)  # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int | None, start: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc_alive(pid, start):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- network ---------------------------------------------------------------------------------

def ssh_banner(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when an SSH server answers with its banner on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --- cgroups ---------------------------------------------------------------------------------

def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified``
    on a hybrid host), or None."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].encode().decode("unicode_escape"))
    return None


def proc_cgroup2(pid: int) -> str | None:
    """The cgroup v2 path of a process (``/osfleet-lab...``: its ``0::`` line), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


# --- names -----------------------------------------------------------------------------------

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix) or prefix == "cache":
        raise UsageError(
            f"bad prefix {prefix!r}: use 1-12 lower-case letters or digits, starting with a letter"
            " (not 'cache')"
        )
    return prefix


def group_name(name: str) -> str:
    """Ansible group name for a device type or prefix (dashes become underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
