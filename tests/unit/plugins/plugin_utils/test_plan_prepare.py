# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decide functions of preflight, lock, supervisor, fetch and rootfs: tables of device states."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, parse_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError
from ansible_collections.osfleet.hup.plugins.plugin_utils import plan_prepare as pp
from ansible_collections.osfleet.hup.plugins.plugin_utils.plan_prepare import (
    CachedImage,
    CacheState,
    FetchArgs,
    LockArgs,
    PreflightArgs,
    RegistryCheck,
    ReleaseArgs,
    RootfsArgs,
    SupervisorArgs,
)

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


@pytest.fixture(name="catalog")
def fixture_catalog() -> Catalog:
    return make_catalog()


def stamp(version: str, digest: str, device_type: str = GX, source: str = "provision") -> dict[str, t.Any]:
    return {"device_type": device_type, "version": version, "digest": digest, "source": source, "written_at": "2026-11-28T18:00:00Z"}


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
        "boot_id": "b1",
        "rollback_health_state": health_state,
        "python": "absent",
        "uname_m": "x86_64",
    }
    return parse_state(raw)


NOW = 1_800_000_000  # 2027-01-15T08:00:00Z
RECENT = "2027-01-15T07:50:00Z"  # 600 s before NOW
OLD = "2027-01-15T05:00:00Z"  # 3 h before NOW
ME = "ops@controller"
BOB = "bob@laptop"


def lock_of(owner: str, since: str = RECENT, run_id: str | None = "r1", target: str | None = "2.113.0") -> dict[str, t.Any]:
    return {"owner": owner, "run_id": run_id, "since": since, "target": target}


OK_REGISTRIES = (RegistryCheck("primary", "127.0.0.1:5000"), RegistryCheck("fallback", "127.0.0.1:5001"))
DOWN_REGISTRIES = (
    RegistryCheck("primary", "127.0.0.1:5000", "curl: (7) Failed to connect to 127.0.0.1 port 5000"),
    RegistryCheck("fallback", "127.0.0.1:5001", "curl: (7) Failed to connect to 127.0.0.1 port 5001"),
)


# --- preflight -----------------------------------------------------------------------------------

def preflight(catalog: Catalog, state: DeviceState, target: str = "2.113.0", registries: t.Sequence[RegistryCheck] = OK_REGISTRIES,
              **kw: t.Any) -> pp.PreflightPlan:
    release = ReleaseArgs(target, kw.pop("device_type", None))
    args = PreflightArgs(release=release, lock_owner=ME, **kw)
    return pp.decide_preflight(args, catalog, state, registries, now=NOW)


PREFLIGHT_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str | None, str | None, list[str]]] = [
    # (name, state kwargs, preflight kwargs, phase, method, problem fragments; [] = no problem)
    ("update needed", {}, {}, "needed", "balenahup", []),
    ("target with +rev", {"version": "2.113.0"}, {"target": "2.114.1+rev1"}, "needed", "balenahup", []),
    ("already on target", {"version": "2.113.0"}, {}, "current", "balenahup", []),
    ("on target: nothing else matters", {"version": "2.113.0", "lock": lock_of(BOB), "free_kib": {"data": 1, "state": 1}},
     {"registries": DOWN_REGISTRIES}, "current", "balenahup", []),
    ("booted target, not committed", {"version": "2.113.0", "upgrade": 1}, {}, "pending_commit", "balenahup", []),
    ("booted target, breadcrumb left", {"version": "2.113.0", "markers": ("rollback-health-breadcrumb",)}, {}, "pending_commit", "balenahup", []),
    ("staged", {"inactive_stamp": stamp("2.113.0", D113, source="delta")}, {}, "staged", "balenahup", []),
    ("staged and armed", {"inactive_stamp": stamp("2.113.0", D113), "root_part": 3, "upgrade": 1}, {}, "staged", "balenahup", []),
    ("staged: space not checked", {"inactive_stamp": stamp("2.113.0", D113), "free_kib": {"data": 10}}, {}, "staged", "balenahup", []),
    ("unknown target", {}, {"target": "9.9.9"}, None, None,
     ["unknown target version 9.9.9 for genericx86-64-ext; known: 2.12.0, 2.88.4, 2.113.0, 2.114.1+rev1, 2.120.0.dev"]),
    ("older target", {"version": "2.113.0"}, {"target": "2.88.4"}, "needed", "balenahup",
     ["target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed)"]),
    ("older target allowed", {"version": "2.113.0"}, {"target": "2.88.4", "allow_downgrade": True}, "needed", "balenahup", []),
    ("prod to dev", {}, {"target": "2.120.0.dev"}, "needed", "balenahup", ["cannot switch between development and production"]),
    ("unsupported source", {"version": "2.12.0"}, {}, "needed", "balenahup", ["the running 2.12.0 is older than 2.14.0"]),
    ("wrong device type", {}, {"target": "6.1.0", "device_type": JX}, "needed", "takeover",
     ["the device is a genericx86-64-ext, the release is for jetson-xavier", "needs the advanced update (takeover)"]),
    ("device type unknown to the catalog", {"slug": "raspberrypi4-64"}, {}, None, None,
     ["unknown device type raspberrypi4-64 in catalog test-catalog.json; known: genericx86-64-ext, jetson-xavier"]),
    ("takeover needed", {"version": "5.1.0", "slug": JX, "arch": "aarch64"}, {"target": "6.1.0"}, "needed", "takeover",
     ["needs the advanced update (takeover), which wipes the data partition (the partition layout changes from l4t-r32 to l4t-r35)"]),
    ("takeover allowed", {"version": "5.1.0", "slug": JX, "arch": "aarch64"}, {"target": "6.1.0", "allow_takeover": True},
     "needed", "takeover", []),
    ("both registries down", {}, {"registries": DOWN_REGISTRIES}, "needed", "balenahup",
     ["no registry answers from the device: primary 127.0.0.1:5000: curl: (7) Failed to connect to 127.0.0.1 port 5000; "
      "fallback 127.0.0.1:5001: curl: (7) Failed to connect to 127.0.0.1 port 5001"]),
    ("primary down, fallback up", {}, {"registries": (DOWN_REGISTRIES[0], OK_REGISTRIES[1])}, "needed", "balenahup", []),
    ("registry down, check disabled", {}, {"registries": DOWN_REGISTRIES, "check_registry": False}, "needed", "balenahup", []),
    ("registry down, staged", {"inactive_stamp": stamp("2.113.0", D113)}, {"registries": DOWN_REGISTRIES}, "staged", "balenahup",
     ["no registry answers"]),
    ("inactive root too small", {"size_kib": {"inactive": 20000}}, {}, "needed", "balenahup",
     ["the inactive root resin-rootB is too small: 19 MiB, the release needs 24 MiB (size × 1.2)"]),
    ("data partition full", {"free_kib": {"data": 50 * 1024}}, {}, "needed", "balenahup",
     ["not enough free space on /mnt/data: 50 MiB free, 84 MiB needed (release 20 MiB + 64 MiB margin)"]),
    ("data margin option", {"free_kib": {"data": 50 * 1024}}, {"min_free_data_mib": 10}, "needed", "balenahup", []),
    ("state partition full", {"free_kib": {"state": 63}}, {}, "needed", "balenahup",
     ["not enough free space on /mnt/state: 63 KiB free, 64 KiB needed"]),
    ("state margin option", {"free_kib": {"state": 1000}}, {"min_free_state_mib": 2}, "needed", "balenahup",
     ["not enough free space on /mnt/state: 1000 KiB free, 2048 KiB needed"]),
    ("lock held by another owner", {"lock": lock_of(BOB)}, {}, "needed", "balenahup",
     ["update already in progress: lock held by bob@laptop since 2027-01-15T07:50:00Z"]),
    ("lock held by this owner", {"lock": lock_of(ME)}, {}, "needed", "balenahup", []),
    ("stale lock of another owner", {"lock": lock_of(BOB, since=OLD)}, {}, "needed", "balenahup", []),
    ("stale lock, longer limit", {"lock": lock_of(BOB, since=OLD)}, {"lock_stale_after": 86400}, "needed", "balenahup",
     ["lock held by bob@laptop"]),
    ("unreadable lock", {"lock": "{garbage"}, {}, "needed", "balenahup", ["the update lock /mnt/state/osfleet/hup.lock is unreadable"]),
    ("reference updater runs", {"legacy_lock": True}, {}, "needed", "balenahup",
     ["update already in progress: /var/lock/resinhup.lock is held"]),
    ("booted another update, not committed", {"upgrade": 1}, {}, "needed", "balenahup",
     ["an update to 2.88.4 is waiting for its commit (resin-rootA booted with upgrade_available=1)"]),
    ("rollback-health still testing", {"health_state": "testing"}, {}, "needed", "balenahup",
     ["rollback-health is checking the update to 2.88.4 (testing)"]),
    ("armed env naming the inactive root is fine", {"root_part": 3, "upgrade": 1, "inactive_stamp": stamp("2.114.1+rev1", D114)},
     {}, "needed", "balenahup", []),
    ("breadcrumbs alone are fine", {"markers": ("rollback-health-breadcrumb", "rollback-altboot-breadcrumb")}, {}, "needed", "balenahup", []),
    ("rolled back earlier is fine", {"markers": ("rollback-health-triggered", "rollback-health-failed")}, {}, "needed", "balenahup", []),
    ("bad bootloader env", {"uenv": "resin_root_part=zz\nupgrade_available=0\n"}, {}, None, None, ["cannot read the bootloader env"]),
    ("every problem at once", {"version": "2.113.0", "lock": lock_of(BOB), "free_kib": {"data": 1024, "state": 10}},
     {"target": "2.88.4", "registries": DOWN_REGISTRIES}, "needed", "balenahup",
     ["older than the running", "lock held by bob@laptop", "/mnt/data", "/mnt/state", "no registry answers"]),
]


@pytest.mark.parametrize(("state_kw", "pf_kw", "phase", "method", "problems"),
                         [c[1:] for c in PREFLIGHT_CASES], ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight(catalog: Catalog, state_kw: dict[str, t.Any], pf_kw: dict[str, t.Any], phase: str | None,
                   method: str | None, problems: list[str]) -> None:
    plan = preflight(catalog, make_state(**state_kw), **pf_kw)
    assert plan.phase == phase
    assert plan.method == method
    for fragment in problems:
        assert any(fragment in p for p in plan.problems), (fragment, plan.problems)
    if not problems:
        assert plan.problems == []
    assert len(plan.problems) == len(set(plan.problems))


def test_preflight_release_size_unknown_skips_size_checks(catalog: Catalog) -> None:
    state = make_state(version="2.113.0", size_kib={"inactive": 10}, free_kib={"data": 10})
    plan = preflight(catalog, state, target="2.114.1+rev1")  # no size in the catalog
    assert plan.problems == []


def test_preflight_release_and_notes(catalog: Catalog) -> None:
    plan = preflight(catalog, make_state())
    assert plan.release is not None and plan.release.digest == D113
    assert plan.notes == ["2.88.4 → 2.113.0"]
    assert pp.release_dict(plan.release)["deltas"] == [
        {"from": "2.88.4", "repository": "osfleet/gx-delta", "tag": "2.88.4-2.113.0", "digest": DELTA113, "size": MIB}
    ]


def test_takeover_reasons(catalog: Catalog) -> None:
    release = catalog.release(JX, "6.1.0")
    assert pp.takeover_reason(JX, "5.1.0", release, None, "aarch64", "6.0.50") == (
        "jetson-xavier changes its partition layout at 6.0.50, between 5.1.0 and 6.1.0"
    )
    assert pp.takeover_reason(JX, "5.1.0", release, None, "armv7hf", None) == "the architecture changes from armv7hf to aarch64"


# --- lock ----------------------------------------------------------------------------------------

LOCK_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str, str | None, dict[str, t.Any] | None]] = [
    # (name, state kwargs, lock args, op, error fragment, lock after)
    ("take a free lock", {}, {"run_id": "r1", "target": "2.113.0"}, "write", None,
     {"owner": ME, "run_id": "r1", "since": None, "target": "2.113.0"}),
    ("same owner, same run: no change", {"lock": lock_of(ME)}, {"run_id": "r1", "target": "2.113.0"}, "none", None, lock_of(ME)),
    ("same owner, no run id given: no change", {"lock": lock_of(ME)}, {}, "none", None, lock_of(ME)),
    ("same owner, new run id: keeps since", {"lock": lock_of(ME)}, {"run_id": "r2"}, "write", None, lock_of(ME, run_id="r2")),
    ("another owner", {"lock": lock_of(BOB)}, {}, "none", "update already in progress: lock held by bob@laptop since 2027-01-15T07:50:00Z", None),
    ("another owner, stale", {"lock": lock_of(BOB, since=OLD)}, {"run_id": "r9"}, "write", None,
     {"owner": ME, "run_id": "r9", "since": None, "target": None}),
    ("another owner, never stale", {"lock": lock_of(BOB, since=OLD)}, {"stale_after": 0}, "none", "lock held by bob@laptop", None),
    ("another owner, force", {"lock": lock_of(BOB)}, {"force": True}, "write", None, {"owner": ME, "run_id": None, "since": None, "target": None}),
    ("unreadable lock", {"lock": "not json"}, {}, "none", "is unreadable; use force=true", None),
    ("unreadable lock, force", {"lock": "not json"}, {"force": True}, "write", None, {"owner": ME, "run_id": None, "since": None, "target": None}),
    ("reference updater holds its lock", {"legacy_lock": True}, {}, "none", "/var/lock/resinhup.lock is held", None),
    ("release own lock", {"lock": lock_of(ME)}, {"state": "absent"}, "remove", None, None),
    ("release: no lock", {}, {"state": "absent"}, "none", None, None),
    ("release another's lock", {"lock": lock_of(BOB)}, {"state": "absent"}, "none",
     "lock held by bob@laptop since 2027-01-15T07:50:00Z, not by ops@controller", None),
    ("release another's lock, force", {"lock": lock_of(BOB)}, {"state": "absent", "force": True}, "remove", None, None),
    ("release an unreadable lock, force", {"lock": "x"}, {"state": "absent", "force": True}, "remove", None, None),
    ("release while the reference updater runs", {"lock": lock_of(ME), "legacy_lock": True}, {"state": "absent"}, "remove", None, None),
]


@pytest.mark.parametrize(("state_kw", "lock_kw", "op", "error", "after"), [c[1:] for c in LOCK_CASES], ids=[c[0] for c in LOCK_CASES])
def test_lock(state_kw: dict[str, t.Any], lock_kw: dict[str, t.Any], op: str, error: str | None,
              after: dict[str, t.Any] | None) -> None:
    plan = pp.decide_lock(LockArgs(owner=ME, **lock_kw), make_state(**state_kw), now=NOW)
    assert plan.op == op
    if error:
        assert plan.error is not None and error in plan.error
        assert plan.op == "none"
    else:
        assert plan.error is None
        if op != "none":
            assert plan.after == after
            assert plan.actions
        else:
            assert plan.actions == []
            assert plan.after == plan.before


def test_lock_expect_token_matches_the_probe() -> None:
    assert pp.decide_lock(LockArgs(owner=ME), make_state(), now=NOW).expect == ""
    assert pp.decide_lock(LockArgs(owner=ME, force=True), make_state(lock=lock_of(BOB)), now=NOW).expect == f"{BOB}|{RECENT}"
    assert pp.decide_lock(LockArgs(owner=ME, force=True), make_state(lock="junk"), now=NOW).expect == pp.UNREADABLE_TOKEN


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed")
@pytest.mark.parametrize("doc", [
    {"owner": "a@b", "since": "2027-01-15T07:50:00Z"},
    {"owner": "a@b"},
    {"owner": "x y|z", "since": 5},
    {"owner": None, "since": None, "run_id": "r"},
    {"owner": "ünï@cödé", "since": "t", "target": "2.113.0"},
])
def test_lock_token_is_what_jq_prints(doc: dict[str, t.Any]) -> None:
    """The act script compares the lock file with jq; the controller's token must be the same text."""
    out = subprocess.run(["jq", "-r", '"\\(.owner)|\\(.since)"'], input=json.dumps(doc), capture_output=True, text=True, check=True)
    assert out.stdout.rstrip("\n") == pp.lock_token(doc)


@pytest.mark.parametrize(("since", "now", "stale_after", "stale"), [
    (RECENT, NOW, 7200, False),
    (OLD, NOW, 7200, True),
    (OLD, NOW, 0, False),
    ("2027-01-15T05:00:00+00:00", NOW, 3600, True),
    ("not a time", NOW, 1, False),
    (OLD, None, 1, False),
])
def test_lock_is_stale(since: str, now: int | None, stale_after: int, stale: bool) -> None:
    assert pp.lock_is_stale({"owner": BOB, "since": since}, now, stale_after) is stale


# --- supervisor ----------------------------------------------------------------------------------

REGS = ("127.0.0.1:5000", "127.0.0.1:5001")
SUPERVISOR_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str, str | None, list[str], str | None]] = [
    # (name, state kwargs, supervisor args, op, target, images, error fragment)
    ("stop an active supervisor", {}, {"state": "stopped"}, "stop", None, [], None),
    ("stop: already stopped", {"supervisor": "inactive"}, {"state": "stopped"}, "none", None, [], None),
    ("start a stopped supervisor", {"supervisor": "inactive"}, {"state": "started"}, "start", None, [], None),
    ("start: already active", {}, {"state": "started"}, "none", None, [], None),
    ("update to what the inactive root ships", {"inactive_sup": "14.11.2"}, {"state": "updated"}, "update", "14.11.2",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2", "127.0.0.1:5001/osfleet/balena-supervisor:v14.11.2"], None),
    ("explicit version wins, leading v", {"inactive_sup": "14.11.2"}, {"state": "updated", "version": "v15.0.0"}, "update", "15.0.0",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v15.0.0", "127.0.0.1:5001/osfleet/balena-supervisor:v15.0.0"], None),
    ("catalog version as the last default", {}, {"state": "updated", "release_version": "14.11.2"}, "update", "14.11.2",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2", "127.0.0.1:5001/osfleet/balena-supervisor:v14.11.2"], None),
    ("inactive root holds the release: its supervisor", {"inactive_sup": "14.12.0", "inactive_stamp": stamp("2.113.0", D113)},
     {"state": "updated", "release_version": "14.11.2", "release_digest": D113}, "update", "14.12.0",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.12.0", "127.0.0.1:5001/osfleet/balena-supervisor:v14.12.0"], None),
    ("inactive root holds another release: the catalog's", {"inactive_sup": "14.0.8", "inactive_stamp": stamp("2.88.4", D88)},
     {"state": "updated", "release_version": "14.11.2", "release_digest": D113}, "update", "14.11.2",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2", "127.0.0.1:5001/osfleet/balena-supervisor:v14.11.2"], None),
    ("unstamped inactive root: the catalog's", {"inactive_sup": "14.0.8"},
     {"state": "updated", "release_version": "14.11.2", "release_digest": D113}, "update", "14.11.2",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2", "127.0.0.1:5001/osfleet/balena-supervisor:v14.11.2"], None),
    ("same version: nothing", {"running_sup": "14.11.2", "inactive_sup": "14.11.2"}, {"state": "updated"}, "none", "14.11.2", [], None),
    ("newer runs: nothing", {"running_sup": "15.1.0", "inactive_sup": "14.11.2"}, {"state": "updated"}, "none", "14.11.2", [], None),
    ("compared as versions, not text", {"running_sup": "14.9.0"}, {"state": "updated", "version": "14.11.2"}, "update", "14.11.2",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2", "127.0.0.1:5001/osfleet/balena-supervisor:v14.11.2"], None),
    ("unknown running version", {"running_sup": None}, {"state": "updated", "version": "14.11.2"}, "update", "14.11.2",
     ["127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2", "127.0.0.1:5001/osfleet/balena-supervisor:v14.11.2"], None),
    ("no version anywhere", {}, {"state": "updated"}, "none", None, [], "no supervisor version given"),
    ("bad version", {}, {"state": "updated", "version": "latest"}, "none", None, [], "invalid supervisor version"),
    ("no repository", {}, {"state": "updated", "version": "15.0.0", "repository": None}, "none", "15.0.0", [], "no supervisor repository"),
    ("no registry", {}, {"state": "updated", "version": "15.0.0", "registries": ()}, "none", "15.0.0", [], "no registry"),
]


@pytest.mark.parametrize(("state_kw", "sup_kw", "op", "target", "images", "error"),
                         [c[1:] for c in SUPERVISOR_CASES], ids=[c[0] for c in SUPERVISOR_CASES])
def test_supervisor(state_kw: dict[str, t.Any], sup_kw: dict[str, t.Any], op: str, target: str | None, images: list[str],
                    error: str | None) -> None:
    kw = {"repository": "osfleet/balena-supervisor", "registries": REGS}
    kw.update(sup_kw)
    plan = pp.decide_supervisor(SupervisorArgs(**kw), make_state(**state_kw))
    assert (plan.op, plan.target, plan.images) == (op, target, images)
    assert (plan.error is None) == (error is None)
    if error:
        assert error in str(plan.error)
    assert bool(plan.actions) == (op != "none")


# --- fetch ---------------------------------------------------------------------------------------

CACHE = "/mnt/data/osfleet/images"


def cached(digest: str, kind: str = "registry") -> CachedImage:
    return CachedImage(name=pp.digest_hex(digest), digest=digest, kind=kind, ref=f"reg/x@{digest}", bytes=100)


def fetch(catalog: Catalog, state: DeviceState, cache: CacheState | None = None, target: str = "2.113.0",
          sources: tuple[str, ...] = pp.DEFAULT_SOURCES, cache_dir: str = CACHE) -> pp.FetchPlan:
    rargs = ReleaseArgs(target)
    tgt = pp.resolve_target(rargs, catalog, state)
    return pp.decide_fetch(FetchArgs(rargs, sources, cache_dir), tgt, catalog, state, cache or CacheState(cache_dir))


FULL_P = f"127.0.0.1:5000/osfleet/gx@{D113}"
FULL_F = f"127.0.0.1:5001/osfleet/gx@{D113}"
DELTA_P = f"127.0.0.1:5000/osfleet/gx-delta@{DELTA113}"

FETCH_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], list[tuple[str, str]], str | None]] = [
    # (name, state kwargs, fetch kwargs, [(kind, ref)] to try, error fragment)
    ("delta first when the active root is its base", {}, {}, [("delta", DELTA_P), ("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta without an active stamp", {"active_stamp": None}, {}, [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta when the stamp's digest is not the catalog's", {"active_stamp": stamp("2.88.4", D114)}, {},
     [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta from another device type's stamp", {"active_stamp": stamp("2.88.4", D88, JX)}, {}, [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta from another version", {"version": "2.12.0"}, {}, [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("the user's order", {}, {"sources": ("fallback", "delta")}, [("fallback", FULL_F), ("delta", DELTA_P)], None),
    ("registry only", {}, {"sources": ("registry",)}, [("registry", FULL_P)], None),
    ("delta only, none applies", {"active_stamp": None}, {"sources": ("delta",)}, [],
     "none of the sources delta is available for 2.113.0 (available: registry, fallback)"),
    ("cache dir must be safe", {}, {"cache_dir": "/"}, [], "cache_dir '/' must be an absolute"),
    ("cache dir must be normalised", {}, {"cache_dir": "/mnt/data/../x"}, [], "must be an absolute, normalised path"),
]


@pytest.mark.parametrize(("state_kw", "fetch_kw", "tries", "error"), [c[1:] for c in FETCH_CASES], ids=[c[0] for c in FETCH_CASES])
def test_fetch_sources(catalog: Catalog, state_kw: dict[str, t.Any], fetch_kw: dict[str, t.Any], tries: list[tuple[str, str]],
                       error: str | None) -> None:
    plan = fetch(catalog, make_state(**state_kw), **fetch_kw)
    assert not plan.done
    assert [(a.kind, a.ref) for a in plan.attempts] == tries
    assert (plan.error is None) == (error is None)
    if error:
        assert error in str(plan.error)
    else:
        assert plan.actions and all(a.digest in a.ref for a in plan.attempts)


def test_fetch_tags_are_valid_oci_ref_names(catalog: Catalog) -> None:
    plan = fetch(catalog, make_state(version="2.113.0"), target="2.114.1+rev1")
    assert [a.tag for a in plan.attempts] == ["2.113.0-2.114.1_rev1", "2.114.1_rev1", "2.114.1_rev1"]


@pytest.mark.parametrize(("state_kw", "images", "done_by", "cached_digest"), [
    ({"inactive_stamp": stamp("2.113.0", D113)}, (), "inactive", None),
    ({}, (cached(D113),), "cache", D113),
    ({}, (cached(DELTA113, "delta"),), "cache", DELTA113),
    ({}, (cached(D114), cached(D113, "fallback")), "cache", D113),
])
def test_fetch_done(catalog: Catalog, state_kw: dict[str, t.Any], images: tuple[CachedImage, ...], done_by: str,
                    cached_digest: str | None) -> None:
    plan = fetch(catalog, make_state(**state_kw), CacheState(CACHE, images))
    assert plan.done and plan.done_by == done_by
    assert (plan.cached.digest if plan.cached else None) == cached_digest
    assert plan.attempts == [] and plan.actions == []


def test_fetch_ignores_unusable_cache(catalog: Catalog) -> None:
    """A cached delta whose base is not the active root, or another release, is no reason to skip."""
    cache = CacheState(CACHE, (cached(DELTA113, "delta"), cached(D114)), staging=(".staging-" + "2" * 64,))
    plan = fetch(catalog, make_state(active_stamp=None), cache)
    assert not plan.done
    assert [a.kind for a in plan.attempts] == ["registry", "fallback"]
    assert plan.remove_staging == [".staging-" + "2" * 64]
    assert plan.actions[0] == f"removed 1 staging dir(s) of an interrupted fetch from {CACHE}"


def test_fetch_without_fallback_registry() -> None:
    catalog = make_catalog(registries={"primary": "reg.example:443"})
    plan = fetch(catalog, make_state())
    assert [a.kind for a in plan.attempts] == ["delta", "registry"]


def test_fetch_unknown_target(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown target version 3.0.0 for genericx86-64-ext; known: 2.12.0, 2.88.4"):
        fetch(catalog, make_state(), target="3.0.0")


def test_fetched_actions() -> None:
    plan = pp.FetchPlan(done=False, cache_dir=CACHE, remove_staging=[".staging-x"])
    image = CachedImage("ab", "sha256:ab", "fallback", "r3", 1234)
    attempts = [{"kind": "registry", "ref": "r2", "ok": False, "error": "refused"}, {"kind": "fallback", "ref": "r3", "ok": True, "error": ""}]
    assert pp.fetched_actions(plan, "2.113.0", attempts, image) == [
        f"removed 1 staging dir(s) of an interrupted fetch from {CACHE}",
        "failed first: registry (r2): refused",
        "fetched 2.113.0 from fallback (r3): 1234 bytes",
    ]


def test_attempt_errors_message() -> None:
    text = pp.describe_attempt_errors([
        {"kind": "delta", "ref": "r1", "error": "manifest unknown"},
        {"kind": "registry", "ref": "r2", "error": "connection refused"},
        {"kind": "fallback", "ref": "r3", "error": ""},
    ])
    assert text == "all sources failed: delta (r1): manifest unknown; registry (r2): connection refused; fallback (r3): failed"


# --- rootfs --------------------------------------------------------------------------------------

def rootfs(catalog: Catalog, state: DeviceState, images: tuple[CachedImage, ...] = (), cache_dir: str = CACHE) -> pp.RootfsPlan:
    rargs = ReleaseArgs("2.113.0")
    tgt = pp.resolve_target(rargs, catalog, state)
    return pp.decide_rootfs(RootfsArgs(rargs, cache_dir), tgt, catalog, state, CacheState(cache_dir, images))


ROOTFS_CASES: list[tuple[str, dict[str, t.Any], tuple[CachedImage, ...], str, str | None, str | None]] = [
    # (name, state kwargs, cached images, mode, stamp source, error fragment)
    ("full image", {}, (cached(D113, "fallback"),), "full", "fallback", None),
    ("delta", {}, (cached(DELTA113, "delta"),), "delta", "delta", None),
    ("full preferred over delta", {}, (cached(DELTA113, "delta"), cached(D113)), "full", "registry", None),
    ("full image without fetch metadata", {}, (CachedImage(pp.digest_hex(D113), D113),), "full", "registry", None),
    ("delta without a matching base", {"active_stamp": None}, (cached(DELTA113, "delta"),), "", None, "no fetched image of 2.113.0"),
    ("nothing fetched", {}, (), "", None, "no fetched image of 2.113.0 in /mnt/data/osfleet/images: run osfleet.hup.fetch first"),
    ("another release cached", {}, (cached(D114),), "", None, "no fetched image"),
    ("inactive resolves to the running root", {"same_dev": True}, (cached(D113),), "", None, "refusing to write resin-rootB"),
]


@pytest.mark.parametrize(("state_kw", "images", "mode", "source", "error"), [c[1:] for c in ROOTFS_CASES], ids=[c[0] for c in ROOTFS_CASES])
def test_rootfs(catalog: Catalog, state_kw: dict[str, t.Any], images: tuple[CachedImage, ...], mode: str, source: str | None,
                error: str | None) -> None:
    plan = rootfs(catalog, make_state(**state_kw), images)
    assert not plan.done
    assert plan.mode == mode
    assert (plan.error is None) == (error is None)
    if error:
        assert error in str(plan.error)
        return
    assert plan.label == "resin-rootB" and plan.dev == "/dev/loop1p3"
    assert plan.stamp == {"device_type": GX, "version": "2.113.0", "digest": D113, "source": source}
    assert plan.layout_dir == f"{CACHE}/{plan.image.name}" if plan.image else False
    assert len(plan.actions) == 2


def test_rootfs_done_when_stamped(catalog: Catalog) -> None:
    written = stamp("2.113.0", D113, source="delta")
    plan = rootfs(catalog, make_state(inactive_stamp=written), ())
    assert plan.done and plan.stamp == written and plan.actions == []


def test_rootfs_stamp_with_the_digest_but_another_version_is_rewritten(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D113)), (cached(D113),))
    assert not plan.done and plan.mode == "full"
    assert not fetch(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D113))).done
    assert preflight(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D113))).phase == "needed"


def test_rootfs_another_stamp_is_rewritten(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D114)), (cached(D113),))
    assert not plan.done and plan.mode == "full"


def test_rootfs_missing_image_is_marked_for_check_mode(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(), ())
    assert plan.missing_image and plan.actions


def test_rootfs_bad_cache_dir(catalog: Catalog) -> None:
    assert "must be an absolute" in str(rootfs(catalog, make_state(), (cached(D113),), cache_dir="relative/dir").error)


# --- helpers -------------------------------------------------------------------------------------

def test_open_catalog_names_the_catalog(tmp_path: t.Any) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CatalogError, match=f"catalog file {missing} does not exist"):
        pp.open_catalog(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match=f"catalog {bad} is not valid JSON"):
        pp.open_catalog(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(CATALOG))
    assert pp.open_catalog(str(good)).release(GX, "2.113.0").digest == D113


@pytest.mark.parametrize(("text", "tag"), [("2.113.0", "2.113.0"), ("2.113.0+rev1", "2.113.0_rev1"), ("", "latest"), ("a/b:c", "a_b_c")])
def test_oci_tag(text: str, tag: str) -> None:
    assert pp.oci_tag(text) == tag


def test_stamp_summary() -> None:
    assert pp.stamp_summary(None) is None
    assert pp.stamp_summary(stamp("2.113.0", D113)) == {"device_type": GX, "version": "2.113.0", "digest": D113, "source": "provision"}


def test_default_lock_owner() -> None:
    owner = pp.default_lock_owner()
    assert "@" in owner and owner.split("@")[1]
