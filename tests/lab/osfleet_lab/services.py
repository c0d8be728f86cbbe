# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's host services: two OCI registries (primary, fallback) and an HTTP server.

Public API (the lab lifecycle calls these; keep the signatures):

``start_services(lab_dir, cache_dir, private_registry=False, disk_profile="ab") -> dict``
    For one lab prefix (``lab_dir`` = ``build/lab/<prefix>``): makes sure the releases are built
    (``releases.ensure_built``), gives each registry its own copy of the prebuilt storage tree
    (``lab_dir/registry-{primary,fallback}/storage``: blobs hard-linked, the small repository
    link files copied, so no push is needed and no lab can change another's files), starts
    ``docker-registry serve`` for each on ``127.0.0.1:<free port>`` and an HTTP server
    (``busybox httpd -f``, which answers Range requests: resumable downloads) on
    ``127.0.0.1:<free port>`` serving ``lab_dir/http`` (the disk images of ``disk_profile`` that
    were built, ``catalog.json``), writes ``lab_dir/catalog.json`` (docs/internals.md §3,
    real ports and digests) and returns::

        {"lab_dir": "<lab_dir>", "build": <build key>, "catalog": "<lab_dir>/catalog.json",
         "registries": {"primary": "127.0.0.1:P1", "fallback": "127.0.0.1:P2"},
         "http": "http://127.0.0.1:P3",
         "processes": {"registry-primary": {"pid": N, "start": T, "log": "...", ...},
                       "registry-fallback": {...}, "http": {...}}}

    The processes are detached (own session, stdin /dev/null, logs in ``lab_dir``) and outlive
    the caller. Raises ``LabError`` (naming the service and the reason) if one does not come up;
    whatever was started is stopped again. To break a registry in a test, stop it or delete/
    replace files of its storage; never write into a blob file in place (blobs are hard links
    shared with the cache and the other labs).
    With ``private_registry=True`` (``labctl up --private-registry``) also ``registry-private``
    on ``127.0.0.1:<free port>``: the same releases behind htpasswd auth (bcrypt), a user and a
    random password made for the lab, and ``lab_dir/catalog-private.json`` that names it as the
    only registry; the state gets ``"private_registry": {"addr", "username", "password",
    "catalog"}`` (the inventory's ``lab_private_*`` variables).
``stop_services(state) -> None``
    Stops what ``start_services`` returned (``state["processes"]``), by PID *and* start time
    (a recycled PID is never signalled): SIGTERM, then SIGKILL after 3 s. Idempotent;
    ``start_services`` itself first stops what an earlier run recorded for the same lab. Given only
    ``{"lab_dir": ...}`` (a ``start_services`` that crashed halfway), it stops what is recorded in
    ``lab_dir/services.json`` (written as each process starts).
``registry_process(storage, work_dir)``
    Context manager: a temporary registry on that storage, yields its ``host:port``.

Re-exported from ``releases`` for the lifecycle: ``ensure_built``, ``release_rootfs``,
``release_stamp``, ``known_releases``, ``device_types``, ``layout``, ``find_release``.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .releases import (
    Build, catalog_document, device_types, disk_image_info, ensure_built, find_release,
    known_releases, layout, release_rootfs, release_stamp,
)
from .util import (
    LabError, kill_recorded, proc_alive, proc_start_time, read_json, wait_gone, write_atomic,
)

__all__ = [
    "start_services", "stop_services", "registry_process", "copy_storage", "registry_config",
    # re-exported from releases for the lab lifecycle
    "ensure_built", "release_rootfs", "release_stamp", "known_releases", "device_types",
    "layout", "find_release",
]

REGISTRY_BIN = "docker-registry"
# busybox httpd answers Range requests (resumable downloads); python's http.server does not
HTTPD_BIN = "busybox"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0
V2_DIR = Path("docker/registry/v2")
SERVICES_FILE = "services.json"


# ==== processes ================================================================================

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(name: str, argv: list[str], log_path: Path, cwd: Path) -> dict[str, Any]:
    """Start a detached daemon: a new session, stdin /dev/null, output appended to log_path.

    An intermediate ``sh`` starts it in the background and exits, so the daemon is not our
    child (no zombie, nothing to reap) and outlives us; its PID comes back on stdout.
    """
    if shutil.which(argv[0]) is None:
        raise LabError(f"{name}: cannot run {argv[0]}: not installed")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    script = '{ exec "$@" </dev/null >>"$OSFLEET_LOG" 2>&1; } & echo $!'
    proc = subprocess.run(["/bin/sh", "-c", script, "sh", *argv], cwd=cwd,
                          env={**os.environ, "OSFLEET_LOG": os.fspath(log_path)},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          start_new_session=True, check=False, timeout=10)
    pid_text = proc.stdout.strip()
    if proc.returncode != 0 or not pid_text.isdigit():
        raise LabError(f"{name}: cannot start {argv[0]}: {proc.stderr.strip() or 'no pid'}")
    pid = int(pid_text)
    return {"name": name, "pid": pid, "start": proc_start_time(pid), "log": os.fspath(log_path),
            "argv": argv}


def _last_log_line(entry: dict[str, Any]) -> str:
    try:
        lines = Path(entry["log"]).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _http_answers(url: str) -> bool:
    """True when a plain-HTTP GET of url gets any HTTP response."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1)
    try:
        conn.request("GET", parts.path or "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _wait_http(entry: dict[str, Any], url: str, timeout: float) -> None:
    """Wait until ``url`` answers (any HTTP status) while the process is alive."""
    deadline = time.monotonic() + timeout
    while not _http_answers(url):
        if not proc_alive(entry["pid"], entry["start"]):
            raise LabError(f"{entry['name']} exited at start: {_last_log_line(entry)}")
        if time.monotonic() > deadline:
            raise LabError(f"{entry['name']} did not answer on {url} within {timeout:.0f}s")
        time.sleep(0.02)


def _stop(entry: dict[str, Any]) -> None:
    pid, start = entry.get("pid"), entry.get("start")
    if kill_recorded(pid, start, signal.SIGTERM) and not wait_gone(pid, start, STOP_TIMEOUT):
        kill_recorded(pid, start, signal.SIGKILL)
        if not wait_gone(pid, start, STOP_TIMEOUT):
            raise LabError(f"{entry.get('name', 'process')} (pid {pid}) does not stop")


# ==== registries ===============================================================================

def registry_config(addr: str, storage: Path, htpasswd: Path | None = None) -> str:
    """docker-registry (distribution 2.8) config: filesystem storage, plain HTTP on addr; with
    ``htpasswd``, Basic auth against that file (bcrypt entries)."""
    auth = ["auth:", "  htpasswd:", "    realm: osfleet-lab", f"    path: {json.dumps(os.fspath(htpasswd))}"] if htpasswd else []
    return "\n".join(auth + [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(os.fspath(storage))}",
        "  delete:",
        "    enabled: false",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "  redirect:",
        "    disable: true",
        "http:",
        f"  addr: {addr}",
        "  headers:",
        "    X-Content-Type-Options: [nosniff]",
        "health:",
        "  storagedriver:",
        "    enabled: false",
        "",
    ])


def _spawn_registry(name: str, storage: Path, work_dir: Path, htpasswd: Path | None = None) -> tuple[str, dict[str, Any]]:
    work_dir.mkdir(parents=True, exist_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    addr = f"127.0.0.1:{_free_port()}"
    cfg = work_dir / "config.yml"
    write_atomic(cfg, registry_config(addr, storage, htpasswd))
    entry = _spawn(name, [REGISTRY_BIN, "serve", os.fspath(cfg)], work_dir / "registry.log",
                   work_dir)
    entry.update(addr=addr, storage=os.fspath(storage))
    return addr, entry


def _start_registry(name: str, storage: Path, work_dir: Path) -> tuple[str, dict[str, Any]]:
    """Start a registry and wait for /v2/; retries with another port if it dies at once."""
    error: LabError | None = None
    for _attempt in range(3):
        addr, entry = _spawn_registry(name, storage, work_dir)
        try:
            _wait_http(entry, f"http://{addr}/v2/", START_TIMEOUT)
            return addr, entry
        except LabError as exc:
            _stop(entry)
            error = exc
    assert error is not None
    raise error


@contextlib.contextmanager
def registry_process(storage: Path, work_dir: Path) -> Iterator[str]:
    addr, entry = _start_registry("build registry", storage, work_dir)
    try:
        yield addr
    finally:
        _stop(entry)


def copy_storage(src: Path, dest: Path) -> None:
    """Private copy of a registry storage tree: blob data hard-linked (content-addressed, never
    rewritten), repository link files copied (the registry rewrites those in place). Across
    filesystems the blobs are copied too."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / V2_DIR).mkdir(parents=True)
    same_fs = os.stat(src).st_dev == os.stat(dest).st_dev
    for part, flags in (("blobs", "-al" if same_fs else "-a"), ("repositories", "-a")):
        if (src / V2_DIR / part).exists():
            proc = subprocess.run(["cp", flags, os.fspath(src / V2_DIR / part),
                                   os.fspath(dest / V2_DIR / part)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise LabError(f"cannot copy the registry storage to {dest}: {proc.stderr.strip()}")


# ==== the lab's services =======================================================================

def _prepare_http_dir(build: Build, http_dir: Path, disk_profile: str = "ab") -> None:
    if http_dir.exists():
        shutil.rmtree(http_dir)
    http_dir.mkdir(parents=True)
    for rel in known_releases():
        disk = disk_image_info(build, rel.device_type, rel.version, disk_profile)
        if disk:
            source = build.path / "disk" / disk["file"]
            try:
                os.link(source, http_dir / disk["file"])
            except OSError:  # another filesystem: httpd follows a symlink as well
                os.symlink(source, http_dir / disk["file"])


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash (what docker-registry's htpasswd auth accepts)."""
    try:
        import bcrypt  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise LabError("the private registry needs the python package bcrypt (requirements.txt; make deps)") from None
    return f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode()}\n"


def _private_catalog(catalog: dict[str, Any], addr: str) -> dict[str, Any]:
    """The lab's catalog with the private registry as its only registry (no fallback to go around it)."""
    doc = json.loads(json.dumps(catalog))
    doc["registries"] = {"primary": addr}
    return doc


def start_services(lab_dir: Path, cache_dir: Path, private_registry: bool = False,
                   disk_profile: str = "ab") -> dict[str, Any]:
    """Start a lab's registries and HTTP server and write its catalog (see the module doc).

    ``disk_profile``: the device profile whose disk images (those built) the HTTP server serves
    and the catalog's ``disk_image`` entries name (``ab`` or ``balenaos``; the state's
    ``disk_profile``).

    ``private_registry``: also a third registry with the same releases that wants credentials
    (htpasswd auth, a user and a random password made here), its catalog
    ``lab_dir/catalog-private.json`` naming it as the only registry; the state's
    ``private_registry``: ``{"addr", "username", "password", "catalog"}``."""
    lab_dir = Path(lab_dir).resolve()
    build = ensure_built(Path(cache_dir))
    lab_dir.mkdir(parents=True, exist_ok=True)
    record = lab_dir / SERVICES_FILE
    stop_services({"lab_dir": os.fspath(lab_dir)})  # leftovers of an earlier run of this lab
    started: list[dict[str, Any]] = []

    def remember(entry: dict[str, Any]) -> None:
        started.append(entry)
        write_atomic(record, json.dumps({"processes": {e["name"]: e for e in started}}) + "\n")

    try:
        http_dir = lab_dir / "http"
        _prepare_http_dir(build, http_dir, disk_profile)
        port = _free_port()
        http = _spawn("http", [HTTPD_BIN, "httpd", "-f", "-v", "-p", f"127.0.0.1:{port}", "-h",
                               os.fspath(http_dir)], lab_dir / "http.log", lab_dir)
        http["url"] = f"http://127.0.0.1:{port}"
        remember(http)
        endpoints: dict[str, str] = {}
        for name in ("primary", "fallback"):
            work = lab_dir / f"registry-{name}"
            copy_storage(build.registry_storage, work / "storage")
            addr, entry = _spawn_registry(f"registry-{name}", work / "storage", work)
            remember(entry)
            endpoints[name] = addr
        private: dict[str, Any] | None = None
        if private_registry:
            work = lab_dir / "registry-private"
            copy_storage(build.registry_storage, work / "storage")
            private = {"username": "osfleet-lab", "password": secrets.token_urlsafe(18)}
            htpasswd = work / "htpasswd"
            write_atomic(htpasswd, htpasswd_line(private["username"], private["password"]))
            os.chmod(htpasswd, 0o600)
            addr, entry = _spawn_registry("registry-private", work / "storage", work, htpasswd)
            remember(entry)
            private.update(addr=addr, catalog=os.fspath(lab_dir / "catalog-private.json"))
        catalog = catalog_document(build, endpoints["primary"], endpoints["fallback"],
                                   http["url"], disk_profile)
        text = json.dumps(catalog, indent=2, sort_keys=True) + "\n"
        write_atomic(lab_dir / "catalog.json", text)
        write_atomic(http_dir / "catalog.json", text)
        if private:
            write_atomic(Path(private["catalog"]), json.dumps(_private_catalog(catalog, private["addr"]), indent=2, sort_keys=True) + "\n")
        for entry in started:
            if "url" in entry:
                _wait_http(entry, f"{entry['url']}/catalog.json", START_TIMEOUT)
            else:
                _wait_http(entry, f"http://{entry['addr']}/v2/", START_TIMEOUT)
    except BaseException:
        for entry in started:
            _stop(entry)
        raise
    state = {
        "lab_dir": os.fspath(lab_dir),
        "build": build.key,
        "catalog": os.fspath(lab_dir / "catalog.json"),
        "registries": endpoints,
        "http": http["url"],
        "disk_profile": disk_profile,
        "processes": {e["name"]: e for e in started},
    }
    if private:
        state["private_registry"] = private
    write_atomic(record, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return state


def stop_services(state: dict[str, Any]) -> None:
    """Stop the processes of a ``start_services`` result (PID + start time checked)."""
    processes = state.get("processes")
    if processes is None and state.get("lab_dir"):
        # start_services crashed halfway: what it started is recorded in the lab directory
        processes = (read_json(Path(state["lab_dir"]) / SERVICES_FILE, {}) or {}).get("processes")
    for entry in (processes or {}).values():
        _stop(entry)
