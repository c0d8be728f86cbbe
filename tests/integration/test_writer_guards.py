# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The root writer's guards on a lab device (issue 7 items 1, 2, 13 and the guards of write_root.sh).

* The write script run by itself (not through the rootfs step, whose Python decision refuses or
  repairs first) against each bad case: the running root, the root the bootloader env names.
* Crafted images pushed to the lab's registry (the target release plus layers of the test's own):
  a root that does not match its list, a layer that writes through a link of an earlier layer, a
  root whose absolute links name files of the running system, a layer that carries the stamp.
* The env left naming the inactive root with upgrade_available=0 (a rollback waiting for its
  reboot): rootfs points it back at the running root before it writes, so a power cut during the
  write boots the running root.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import shlex
import shutil
import subprocess
import tarfile
import typing as t
from pathlib import Path

import pytest
import test_steps_prepare as prep
from osfleet_harness import REPO_ROOT, Lab
from osfleet_oci import tar_layer

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell

LAB_PREFIX = "itwg"
LAB_DEVICES = 1
TARGET, NEXT = prep.TARGET, prep.NEXT
GX = prep.GX
UENV = "/mnt/boot/resinOS_uEnv.txt"
MARK = "/mnt/sysroot/inactive/osfleet-guard-mark"


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> prep.Steps:
    s = prep.Steps(lab, tmp_path_factory.mktemp("guards"))
    run = s.play([prep.release_step("fetch", sources=["registry"]), prep.release_step("rootfs")])
    assert run.rc == 0, run.summary()
    return s


def set_env(steps: prep.Steps, root_part: int, upgrade: int) -> None:
    steps.lab.sh(steps.host, 'printf "resin_root_part=%s\\nupgrade_available=%s\\n" "$1" "$2" > "$3.tmp" && sync && mv "$3.tmp" "$3" && sync',
                 f"{root_part:x}", str(upgrade), UENV)


def run_write_root(steps: prep.Steps, **params: str) -> tuple[int, str]:
    """The write script itself on the device, with the library functions it names."""
    values = {"label": "resin-rootB", "want_dev": dev_of(steps, "resin-rootB"), "mode": "full", "layout": "/nonexistent",
              "manifest": "sha256:" + "0" * 64, "device_type": GX, "version": TARGET, "digest": "sha256:" + "1" * 64,
              "source": "registry", "listing_sha256": "", "listing_entries": "", **params}
    argv, _stdin = shell.load("write_root").argv(**values)
    # argv: sh -c <script> osfleet <values...>; the exit code and the output come back on stdout
    wrapper = 'script=$1; shift; out=$(sh -c "$script" osfleet "$@" 2>&1); rc=$?; printf "%s\\n%s" "$rc" "$out"'
    out = steps.lab.sh(steps.host, wrapper, argv[2], *argv[4:])
    rc, _sep, text = out.partition("\n")
    return int(rc), text


def dev_of(steps: prep.Steps, label: str) -> str:
    return steps.lab.sh(steps.host, 'readlink -f "/dev/disk/by-partlabel/$1"', label).strip()


def mark_inactive(steps: prep.Steps) -> None:
    steps.lab.sh(steps.host, 'echo mark > "$1" && sync', MARK)


def marked(steps: prep.Steps) -> bool:
    return steps.lab.sh(steps.host, '[ -f "$1" ] && echo yes || echo no', MARK).strip() == "yes"


# --- the write script's own guards ------------------------------------------------------------------------

def test_write_script_refuses_the_running_root(steps: prep.Steps) -> None:
    rc, out = run_write_root(steps, label="resin-rootA", want_dev=dev_of(steps, "resin-rootA"))
    assert rc == 1 and "refusing to format resin-rootA (" in out and "it is the device of / (the running root)" in out, out
    assert steps.lab.state(steps.host).version == prep.SOURCE


def test_write_script_refuses_the_root_the_env_names(steps: prep.Steps) -> None:
    """Disarmed or armed, the env naming resin-rootB keeps the script from formatting it."""
    mark_inactive(steps)
    try:
        for upgrade in (0, 1):
            set_env(steps, 3, upgrade)
            rc, out = run_write_root(steps)
            assert rc == 1, out
            assert "refusing to format resin-rootB (" in out and "the bootloader env names it (partition 3) as the root to boot" in out, out
            assert marked(steps), "the partition was not formatted"
    finally:
        set_env(steps, 2, 0)
    assert steps.lab.state(steps.host).inactive_stamp["digest"] == steps.release(TARGET)["digest"]


# --- crafted images ----------------------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layer(entries: dict[str, t.Any]) -> tuple[bytes, bytes]:
    """(gzip blob, uncompressed tar) of a layer (osfleet_oci.tar_layer)."""
    raw = tar_layer(entries)
    return gzip.compress(raw, mtime=0), raw


def build_oci() -> Path:
    builds = sorted((REPO_ROOT / "build" / "lab" / "cache").glob("build-*/oci"), key=lambda p: p.stat().st_mtime)
    assert builds, "no lab build"
    return builds[-1]


def release_file(path: str, version: str = TARGET) -> bytes:
    """A file of the release image's own layers, as the lab built it."""
    oci = build_oci()
    index = json.loads((oci / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == f"{GX}-{version}")
    manifest = json.loads((oci / "blobs/sha256" / entry["digest"].split(":")[1]).read_bytes())
    for desc in reversed(manifest["layers"]):
        with tarfile.open(oci / "blobs/sha256" / desc["digest"].split(":")[1], "r:gz") as tar:
            for name in (path, "./" + path):
                try:
                    member = tar.getmember(name)
                except KeyError:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                return handle.read()
    raise KeyError(path)


def push_crafted(steps: prep.Steps, name: str, extra: list[dict[str, t.Any]], version: str = TARGET) -> str:
    """The release ``version`` with the layers ``extra`` on top, pushed to the lab's primary
    registry; a catalog copy naming it as ``version`` (no delta). Returns the catalog's path."""
    oci = build_oci()
    index = json.loads((oci / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == f"{GX}-{version}")
    blobs = oci / "blobs/sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    out = steps.workdir / f"oci-{name}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "blobs/sha256").mkdir(parents=True)
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for desc in manifest["layers"]:
        shutil.copyfile(blobs / desc["digest"].split(":")[1], out / "blobs/sha256" / desc["digest"].split(":")[1])

    def put(data: bytes) -> str:
        (out / "blobs/sha256" / sha(data)).write_bytes(data)
        return f"sha256:{sha(data)}"

    manifest = copy.deepcopy(manifest)
    for entries in extra:
        blob, raw = layer(entries)
        manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(blob), "size": len(blob)})
        config["rootfs"]["diff_ids"].append(f"sha256:{sha(raw)}")
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": put(config_bytes), "size": len(config_bytes)}
    manifest_bytes = json.dumps(manifest).encode()
    digest = put(manifest_bytes)
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"), "digest": digest,
         "size": len(manifest_bytes), "annotations": {"org.opencontainers.image.ref.name": name}}]}))
    rel = steps.release(version)
    registry = steps.lab.catalog()["registries"]["primary"]
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", f"oci:{out}:{name}",
                    f"docker://{registry}/{rel['repository']}:{name}"], check=True, capture_output=True, timeout=120)
    size = manifest["config"]["size"] + sum(d["size"] for d in manifest["layers"]) + len(manifest_bytes)
    return steps.catalog_copy(f"{name}.json", prep.release_change(version, digest=digest, deltas=[], size=size))


def write_crafted(steps: prep.Steps, catalog: str) -> prep.TaskResult:
    run = steps.play([prep.release_step("fetch", catalog=catalog, sources=["registry"]), prep.release_step("rootfs", catalog=catalog)])
    fetch, rootfs = steps.results(run)
    assert not fetch.failed, run.summary()
    return rootfs


def test_a_root_that_does_not_match_its_list_is_not_stamped(steps: prep.Steps) -> None:
    """write_root.sh's own check (osfleet_check_root): nothing in Python checks the files."""
    catalog = push_crafted(steps, "guard-changed", [{"usr/share/osfleet/release.json": b"{}\n"}])
    rootfs = write_crafted(steps, catalog)
    assert rootfs.failed and "the written root does not match the release: 1 files differ (./usr/share/osfleet/release.json: FAILED" \
        in rootfs.result["msg"], rootfs.result
    assert steps.lab.state(steps.host).inactive_stamp is None


def test_a_layer_never_writes_through_a_link_of_an_earlier_layer(steps: prep.Steps) -> None:
    """Issue 7 item 2: layer 1 (of the test) leaves x -> /run/osfleet-outside, layer 2 writes x/planted."""
    steps.lab.sh(steps.host, "rm -rf /run/osfleet-outside && mkdir -p /run/osfleet-outside && echo keep > /run/osfleet-outside/victim")
    catalog = push_crafted(steps, "guard-through", [{"x": ("symlink", "/run/osfleet-outside")},
                                                    {"x/planted": b"planted\n", "x/victim": b"overwritten\n"}])
    rootfs = write_crafted(steps, catalog)
    assert rootfs.failed and "writes below x, a symbolic link to /run/osfleet-outside that leaves the root" in rootfs.result["msg"], \
        rootfs.result
    assert steps.lab.sh(steps.host, "ls -A /run/osfleet-outside; cat /run/osfleet-outside/victim").split() == ["victim", "keep"]
    assert steps.lab.state(steps.host).inactive_stamp is None


def test_checks_never_read_the_running_system_through_a_link(steps: prep.Steps) -> None:
    """Issue 7 item 2: the image's /etc/os-release is an absolute link to a file that only the running
    system has (with the target's content): the checks read the written root, where it is missing."""
    os_release = release_file("etc/os-release")
    steps.lab.sh(steps.host, 'printf "%s" "$1" > /run/osfleet-os-release', os_release.decode())
    catalog = push_crafted(steps, "guard-readlink", [{"etc/os-release": ("symlink", "/run/osfleet-os-release")}])
    rootfs = write_crafted(steps, catalog)
    assert rootfs.failed and "the written root does not match the release: 1 files differ (./run/osfleet-os-release: FAILED" \
        in rootfs.result["msg"], rootfs.result
    assert steps.lab.state(steps.host).inactive_stamp is None


def test_a_stamp_shipped_in_the_image_never_makes_a_failed_root_look_staged(steps: prep.Steps) -> None:
    """Issue 7 item 13: the image carries /.osfleet-release.json naming the real target, and its root
    is another version (its own list agrees, so only the os-release check fails). The next run with
    the right catalog must not find the target staged."""
    rel = steps.release(TARGET)
    sums = release_file("usr/share/osfleet/rootfs.sha256").decode()
    forged = release_file("etc/os-release").replace(f'VERSION="{TARGET}"'.encode(), b'VERSION="9.9.9"')
    line = next(x for x in sums.splitlines() if x.endswith("  ./etc/os-release"))
    sums = sums.replace(line, f"{sha(forged)}  ./etc/os-release")
    stamp = json.dumps({"device_type": GX, "version": TARGET, "digest": rel["digest"], "source": "registry",
                        "written_at": "2026-01-01T00:00:00Z"}).encode()
    catalog = push_crafted(steps, "guard-stamp", [{"etc/os-release": forged, "usr/share/osfleet/rootfs.sha256": sums.encode(),
                                                   ".osfleet-release.json": stamp}])
    rootfs = write_crafted(steps, catalog)
    assert rootfs.failed, rootfs.result
    assert steps.lab.state(steps.host).inactive_stamp is None
    run = steps.play([prep.release_step("preflight")])
    (pre,) = steps.results(run)
    assert pre.result["phase"] == "needed", pre.result
    # the right image converges again
    good = steps.play([prep.release_step("fetch", sources=["registry"]), prep.release_step("rootfs")])
    assert good.rc == 0, good.summary()
    assert steps.lab.state(steps.host).inactive_stamp["digest"] == rel["digest"]


# --- issue 7 item 1: the env names the root to write -----------------------------------------------------------

def test_rootfs_points_the_env_at_the_running_root_before_it_writes(steps: prep.Steps) -> None:
    """The env names resin-rootB with upgrade_available=0 (a rollback waiting for its reboot); rootfs
    of another release must point it at resin-rootA first: the power is cut as soon as the write has
    begun, and the device boots resin-rootA."""
    fetch = steps.play([prep.release_step("fetch", version=NEXT, sources=["registry"])])
    assert fetch.rc == 0, fetch.summary()
    mark_inactive(steps)
    set_env(steps, 3, 0)
    seen: dict[str, str] = {}

    def started(events: list[dict[str, t.Any]]) -> bool:
        return any(e["event"] == "start" and e["action"] == "osfleet.hup.rootfs" for e in events)

    def cut_once_writing(_proc: t.Any) -> None:
        for _attempt in range(300):
            out = steps.lab.sh(steps.host, f'[ -f "{MARK}" ] && echo marked || echo gone; cat {UENV}', check=False)
            if out.startswith("gone"):
                seen["env"] = out
                break
        steps.lab.powercut(steps.host)

    run = steps.play([prep.release_step("rootfs", version=NEXT)], trigger=started, on_trigger=cut_once_writing)
    assert run.triggered_at is not None
    assert "resin_root_part=2" in seen.get("env", ""), f"the env when the write had begun: {seen}"
    steps.lab.poweron(steps.host)
    state = steps.lab.state(steps.host)
    assert (state.active_root, state.version, state.env["resin_root_part"]) == ("resin-rootA", prep.SOURCE, "2")
    # and the step converges when run again
    again = steps.play([prep.release_step("rootfs", version=NEXT)])
    assert again.rc == 0, again.summary()
    assert steps.lab.state(steps.host).inactive_stamp["version"] == NEXT


# --- issue 7 item 4: the written root against the target release itself ------------------------------------

DRIFT = "/mnt/sysroot/active/usr/share/osfleet-drift"


def drift_active_root(steps: prep.Steps, present: bool) -> None:
    """Add (or remove) a file on the active root, which is mounted read-only: the delta's base is then not
    exactly the release its stamp names, as on a device whose root was changed by hand."""
    change = 'echo drift > "$1"' if present else 'rm -f "$1"'
    steps.lab.sh(steps.host, f'mount -o remount,rw /mnt/sysroot/active && {change} && sync && mount -o remount,ro /mnt/sysroot/active', DRIFT)


def test_a_delta_on_a_drifted_active_root_is_refused_and_a_clean_one_verified(steps: prep.Steps) -> None:
    """The delta 2.88.4 -> 2.113.0 applied to an active root carrying one file more than 2.88.4: the delta's
    own checks pass (its rootfs.sha256 lists the release's files, all there and right), only the
    release's root_listing shows the extra file. The root is not stamped, the device boots its old OS;
    without the drift the same delta is written and verified."""
    listing = steps.release(TARGET)["root_listing"]
    # nothing staged yet, and no full image of the target cached (rootfs would prefer it to the delta)
    full = steps.release(TARGET)["digest"].split(":")[1]
    steps.lab.sh(steps.host, 'rm -rf /mnt/sysroot/inactive/.osfleet-release.json "$1" && sync', f"{prep.CACHE}/{full}")
    fetch = steps.play([prep.release_step("fetch", sources=["delta"])])
    assert fetch.rc == 0, fetch.summary()
    drift_active_root(steps, True)
    try:
        run = steps.play([prep.release_step("rootfs")])
        (rootfs,) = steps.results(run)
        assert rootfs.failed, rootfs.result
        msg = rootfs.result["msg"]
        assert msg.startswith(f"{steps.host}: writing resin-rootB failed on the device (exit 1): refusing to stamp resin-rootB: the written "
                              f"root is not {TARGET} as the catalog lists it (delta write): its listing has {listing['entries'] + 1} entries "
                              f"(1 more than the release, whose root_listing has {listing['entries']}) and sha256 "), msg
        assert msg.endswith(f", the catalog says {listing['sha256']}; 1 regular file(s) that its rootfs.sha256 does not name: "
                            "./usr/share/osfleet-drift"), msg
        assert steps.lab.state(steps.host).inactive_stamp is None, "a root that is not the release carries no stamp"
        assert steps.lab.sh(steps.host, 'ls /mnt/sysroot/inactive/.osfleet-release.json* 2>/dev/null | wc -l').strip() == "0"
    finally:
        drift_active_root(steps, False)
    # the device boots its old OS from its old root
    steps.lab.labctl("reboot", steps.host, timeout=180)
    state = steps.lab.state(steps.host)
    assert (state.version, state.active_root, state.env["resin_root_part"], state.env["upgrade_available"]) == (prep.SOURCE, "resin-rootA", "2", "0")
    assert state.inactive_stamp is None
    # and the same delta on the clean root is written and verified against the release
    again = steps.play([prep.release_step("fetch", sources=["delta"]), prep.release_step("rootfs")])
    assert again.rc == 0, again.summary()
    fetch, rootfs = steps.results(again)
    assert fetch.result["source"] == "delta" and rootfs.result["mode"] == "delta", again.summary()
    assert rootfs.result["listing_verified"] is True and rootfs.result["listing"] == listing, rootfs.result
    assert any(f"against the catalog's root_listing of {TARGET} ({listing['entries']} entries" in a for a in rootfs.result["actions"])
    assert steps.lab.state(steps.host).inactive_stamp["digest"] == steps.release(TARGET)["digest"]


def test_a_full_image_is_checked_against_the_listing_and_without_one_says_it_is_not_verified(steps: prep.Steps) -> None:
    """A catalog whose root_listing for 2.114.1 is not the image's (as if the listing or the image were
    tampered with): the full image is refused. A catalog without root_listing writes it as before, and
    the result says it was not verified against a listing of the release."""
    listing = steps.release(NEXT)["root_listing"]
    forged = {"sha256": "0" * 64, "entries": listing["entries"]}
    tampered = steps.catalog_copy("listing-tampered.json", prep.release_change(NEXT, root_listing=forged))
    run = steps.play([prep.release_step("fetch", version=NEXT, catalog=tampered, sources=["registry"]),
                      prep.release_step("rootfs", version=NEXT, catalog=tampered)])
    fetch, rootfs = steps.results(run)
    assert not fetch.failed and rootfs.failed, run.summary()
    assert (f"refusing to stamp resin-rootB: the written root is not {NEXT} as the catalog lists it (full write): its listing has "
            f"{listing['entries']} entries (as many as the release, whose root_listing has {listing['entries']}) and sha256 "
            f"{listing['sha256']}, the catalog says {'0' * 64}") in rootfs.result["msg"], rootfs.result
    assert steps.lab.state(steps.host).inactive_stamp is None

    def without_listing(data: dict[str, t.Any]) -> None:
        for rel in data["releases"]:
            rel.pop("root_listing", None)

    bare = steps.catalog_copy("listing-none.json", without_listing)
    run = steps.play([prep.release_step("rootfs", version=NEXT, catalog=bare)])
    (rootfs,) = steps.results(run)
    assert run.rc == 0, run.summary()
    assert (rootfs.result["listing_verified"], rootfs.result["listing"], rootfs.result["mode"]) == (False, None, "full")
    assert any(f"the catalog has no root_listing for {NEXT}, so it was not verified against a listing of the release" in a
               for a in rootfs.result["actions"])
    assert steps.lab.state(steps.host).inactive_stamp["digest"] == steps.release(NEXT)["digest"]


def test_fetch_leaves_the_writer_lock_free_when_it_ends(steps: prep.Steps) -> None:
    """The device's ``timeout`` (busybox) leaves its watcher process behind for up to a second after
    the command ended, with every fd it inherited. fetch.sh ran skopeo under ``timeout`` with
    writer.lock open (fd 8), so the lock stayed held after fetch.sh ended, and a rootfs started at
    once failed with "another fetch or root write is still running" (seen in the link-fault runs)."""
    cache = "/mnt/data/osfleet-lock-check"
    attempts = [{"kind": "registry", "ref": "127.0.0.1:9/none/none:x", "digest": "sha256:" + "2" * 64, "tag": "x"}]
    argv, stdin = shell.load("fetch").argv(cache=cache, insecure=True, input={"attempts": attempts, "auth": None})
    # fetch.sh with a bound (so skopeo runs under timeout), then at once: is writer.lock free?
    wrapper = ('script=$1; shift; printf "%s" "$ATTEMPTS" | OSFLEET_EXEC_TIMEOUT=60 sh -c "$script" osfleet "$@" >/dev/null 2>&1;'
               ' exec 8>/run/osfleet/writer.lock; if flock -n 8; then echo free; else echo held; fi')
    try:
        out = steps.lab.sh(steps.host, f"ATTEMPTS={shlex.quote(t.cast(str, stdin))}; export ATTEMPTS; {wrapper}", argv[2], *argv[4:])
        assert out.strip() == "free", "writer.lock is still held right after fetch.sh ended"
    finally:
        steps.lab.sh(steps.host, 'rm -rf "$1"', cache)
