# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A probed device and a catalog for the preparing steps' unit tests (preflight, lock, supervisor, fetch,
rootfs), and helpers that run their decisions with the documented defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage, CacheState, digest_hex
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, parse_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import FetchArgs, FetchPlan, decide_fetch
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.preflight import PreflightArgs, PreflightPlan, RegistryCheck, decide_preflight
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.rootfs import RootfsArgs, RootfsPlan, decide_rootfs
from documented import documented


GX = "genericx86-64-ext"
JX = "jetson-xavier"
MIB = 1024 * 1024


def dg(c: str) -> str:
    return "sha256:" + c * 64


D88, D113, D114, DDEV, DOLD = dg("1"), dg("2"), dg("3"), dg("4"), dg("5")
DELTA113, DELTA114 = dg("a"), dg("b")
J51, J61 = dg("6"), dg("7")
CATALOG: dict[str, t.Any] = {
    "schema": 1,
    "registries": {"primary": "127.0.0.1:5000", "fallback": "127.0.0.1:5001"},
    "insecure_registries": True,
    "supervisor_repository": "osfleet/balena-supervisor",
    "device_types": {GX: {"arch": "amd64"}, JX: {"arch": "aarch64", "min_takeover_version": "6.0.50"}},
    "releases": [
        {"device_type": GX, "version": "2.12.0", "repository": "osfleet/gx", "digest": DOLD, "layout": "balena-gpt-v1", "arch": "amd64"},
        {"device_type": GX, "version": "2.88.4", "repository": "osfleet/gx", "digest": D88, "size": 20 * MIB,
         "layout": "balena-gpt-v1", "arch": "amd64", "supervisor_version": "14.0.8"},
        {"device_type": GX, "version": "2.113.0", "repository": "osfleet/gx", "tag": "2.113.0", "digest": D113,
         "size": 20 * MIB, "layout": "balena-gpt-v1", "arch": "amd64", "supervisor_version": "14.11.2",
         "deltas": [{"from": "2.88.4", "repository": "osfleet/gx-delta", "tag": "2.88.4-2.113.0", "digest": DELTA113, "size": MIB}]},
        {"device_type": GX, "version": "2.114.1+rev1", "repository": "osfleet/gx", "digest": D114, "layout": "balena-gpt-v1",
         "arch": "amd64", "supervisor_version": "14.11.2",
         "deltas": [{"from": "2.113.0", "repository": "osfleet/gx-delta", "digest": DELTA114, "size": MIB}]},
        {"device_type": GX, "version": "2.120.0.dev", "repository": "osfleet/gx", "digest": DDEV, "size": 20 * MIB,
         "layout": "balena-gpt-v1", "arch": "amd64"},
        {"device_type": JX, "version": "5.1.0", "repository": "osfleet/jx", "digest": J51, "size": 20 * MIB, "layout": "l4t-r32", "arch": "aarch64"},
        {"device_type": JX, "version": "6.1.0", "repository": "osfleet/jx", "digest": J61, "size": 20 * MIB, "layout": "l4t-r35", "arch": "aarch64"},
    ],
}


def make_catalog(**changes: t.Any) -> Catalog:
    data = copy.deepcopy(CATALOG)
    data.update(changes)
    return Catalog(data, "test-catalog.json")


def stamp(version: str, digest: str, device_type: str = GX, source: str = "provision") -> dict[str, t.Any]:
    return {"device_type": device_type, "version": version, "digest": digest, "source": source, "written_at": "2026-11-28T18:00:00Z"}


#: the probed device's uptime (s) and boot id by default
UPTIME = 5000.0


def make_state(
    version: str = "2.88.4",
    slug: str = GX,
    arch: str = "amd64",
    active: str = "resin-rootA",
    root_part: int | None = None,
    upgrade: int = 0,
    markers: tuple[str, ...] = (),
    active_stamp: t.Any = "auto",
    inactive_stamp: dict[str, t.Any] | None = None,
    lock: t.Any = None,
    legacy_lock: bool = False,
    free_kib: dict[str, int] | None = None,
    size_kib: dict[str, int] | None = None,
    supervisor: str = "active",
    running_sup: str | None = "14.0.8",
    inactive_sup: str | None = None,
    health_state: str = "",
    uenv: str | None = None,
    same_dev: bool = False,
    uptime: float = UPTIME,
    boot_id: str = "b1",
    active_hostapp: str | None = None,
    inactive_hostapp: str | None = None,
    hostapp_update: bool = False,
    hostapp_job: dict[str, t.Any] | None = None,
) -> DeviceState:
    """A probed device: by default a committed 2.88.4 on resin-rootA with plenty of space."""
    inactive = "resin-rootB" if active == "resin-rootA" else "resin-rootA"
    devs = {"resin-rootA": "/dev/loop1p2", "resin-rootB": "/dev/loop1p3"}
    index = {"resin-rootA": 2, "resin-rootB": 3}
    if active_stamp == "auto":
        digest = {"2.88.4": D88, "2.113.0": D113, "5.1.0": J51}.get(version, DOLD)
        active_stamp = stamp(version, digest, slug)
    free = {"boot": 30000, "inactive": 250000, "data": 200000, "state": 15000}
    free.update(free_kib or {})
    size = {"boot": 40000, "inactive": 290000, "data": 250000, "state": 19000}
    size.update(size_kib or {})
    df = "\n".join(f"/mnt/{'sysroot/inactive' if k == 'inactive' else k} {free[k]} {size[k]}" for k in free)
    if uenv is None:
        uenv = f"resin_root_part={root_part or index[active]:x}\nupgrade_available={upgrade}\n"
    raw = {
        "os_release": f'ID=balena-os\nVERSION="{version}"\nSLUG={slug}\nMACHINE={slug}\nOSFLEET_ARCH={arch}\n',
        "active_dev": devs[active],
        "active_label": active,
        "inactive_dev": devs[active] if same_dev else devs[inactive],
        "inactive_label": inactive,
        "inactive_mounted": "1",
        "uenv": uenv,
        "uenv_present": "1",
        "bootcount": "",
        "extra_uenv": "",
        "grubenv_path": "",
        "grubenv": "",
        "markers": " ".join(markers),
        "df": df,
        "services": f"balena-supervisor={supervisor}\nbalena=active\nuser-app=active\n",
        "active_stamp": json.dumps(active_stamp) if active_stamp else "",
        "inactive_stamp": json.dumps(inactive_stamp) if inactive_stamp else "",
        "inactive_os_release": "",
        "shipped_supervisor": "SUPERVISOR_VERSION=v14.0.8\n",
        "running_supervisor": f"SUPERVISOR_VERSION=v{running_sup}\n" if running_sup else "",
        "inactive_supervisor": f"SUPERVISOR_VERSION=v{inactive_sup}\n" if inactive_sup else "",
        "config_json": "{}",
        "lock": lock if isinstance(lock, str) else (json.dumps(lock) if lock else ""),
        "legacy_lock": "held" if legacy_lock else "free",
        "boot_id": boot_id,
        "uptime": f"{uptime} 1234.5\n",
        "rollback_health_state": health_state,
        "python": "absent",
        "uname_m": "x86_64",
        "active_hostapp": active_hostapp or "",
        "inactive_hostapp": inactive_hostapp or "",
        "hostapp_update": "present" if hostapp_update else "absent",
        "hostapp_job": json.dumps(hostapp_job) if hostapp_job else "",
    }
    return parse_state(raw)


NOW = 1_800_000_000  # 2027-01-15T08:00:00Z
RECENT = "2027-01-15T07:50:00Z"  # 600 s before NOW
OLD = "2027-01-15T05:00:00Z"  # 3 h before NOW
ME = "ops@controller"
BOB = "bob@laptop"


def lock_of(owner: str, since: str = RECENT, run_id: str | None = "r1", target: str | None = "2.113.0", **more: t.Any) -> dict[str, t.Any]:
    """A lock file; ``more``: the refresh fields (``uptime``, ``boot_id``) and ``interrupted``."""
    return {"owner": owner, "run_id": run_id, "since": since, "target": target, **more}


OK_REGISTRIES = (RegistryCheck("primary", "127.0.0.1:5000"), RegistryCheck("fallback", "127.0.0.1:5001"))
DOWN_REGISTRIES = (
    RegistryCheck("primary", "127.0.0.1:5000", "curl: (7) Failed to connect to 127.0.0.1 port 5000"),
    RegistryCheck("fallback", "127.0.0.1:5001", "curl: (7) Failed to connect to 127.0.0.1 port 5001"),
)


def preflight(catalog: Catalog, state: DeviceState, target: str = "2.113.0", registries: t.Sequence[RegistryCheck] = OK_REGISTRIES,
              **kw: t.Any) -> PreflightPlan:
    """The preflight with its documented defaults; ``kw``: device_type and PreflightArgs fields."""
    args = documented("preflight", catalog="test-catalog.json", target_version=target, device_type=kw.pop("device_type", None), lock_owner=ME)
    pargs = PreflightArgs.from_args(args, args["min_free_mib"])
    return decide_preflight(dataclasses.replace(pargs, **kw), catalog, state, registries, now=NOW)


CACHE = "/mnt/data/osfleet/images"


def cached(digest: str, kind: str = "registry") -> CachedImage:
    return CachedImage(name=digest_hex(digest), digest=digest, kind=kind, ref=f"reg/x@{digest}", bytes=100)


def fetch(catalog: Catalog, state: DeviceState, cache: CacheState | None = None, target: str = "2.113.0",
          sources: tuple[str, ...] | None = None, cache_dir: str = CACHE) -> FetchPlan:
    """The fetch decision; ``sources`` None: the documented default."""
    args = documented("fetch", catalog="test-catalog.json", target_version=target, cache_dir=cache_dir)
    if sources is not None:
        args["sources"] = list(sources)
    fargs = FetchArgs.from_args(args)
    tgt = resolve_target(fargs.release, catalog, state)
    return decide_fetch(fargs, tgt, catalog, state, cache or CacheState(cache_dir))


def rootfs(catalog: Catalog, state: DeviceState, images: tuple[CachedImage, ...] = (), cache_dir: str = CACHE,
           assume_staged: bool = False, cache: CacheState | None = None) -> RootfsPlan:
    """The rootfs decision; ``cache`` None: a cache dir holding ``images``."""
    rargs = RootfsArgs.from_args(documented("rootfs", catalog="test-catalog.json", target_version="2.113.0", cache_dir=cache_dir))
    tgt = resolve_target(rargs.release, catalog, state)
    return decide_rootfs(rargs, tgt, catalog, state, cache or CacheState(cache_dir, images), assume_staged=assume_staged)
