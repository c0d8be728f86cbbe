# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests of the lab's OS releases (releases.py, services.py, os/): run as root.

Part 1 needs no device: the device root, rootfs.sha256, deltas applied the device's way, the
registries and the catalog, reproducible digests, a disk image. Part 2 boots lab devices
(labctl) and checks the device OS itself: services, supervisor updates, an A/B update that
commits, a health-fault release that rolls back and a boot-fault release that falls back.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Device, LabHandle, bring_up, labctl, unique_prefix, wait_for

from osfleet_lab import releases, services
from osfleet_lab.util import CACHE_DIR, LabError

# The device's way of applying an OCI layer (whiteouts first, then the entries), POSIX sh.
APPLY_LAYER_SH = r"""
apply_layer() { # LAYER.tar.gz ROOT
    list=$(tar -tzf "$1") || return 1
    printf '%s\n' "$list" | while IFS= read -r p; do
        n=${p##*/}
        case $n in
            .wh..wh..opq) echo "opaque whiteouts are not supported: $p" >&2; exit 1 ;;
            .wh.*)
                d=${p%/*}
                [ "$d" = "$p" ] && d=.
                rm -rf "$2/$d/${n#.wh.}" || exit 1 ;;
        esac
    done || return 1
    tar -xzf "$1" -C "$2" --numeric-owner --exclude='.wh.*'
}
"""


def sh(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["sh", "-c", script, "sh", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{script[:200]!r} exited {proc.returncode}: {proc.stderr}"
    return proc


def in_root(root: Path, script: str, *binds: tuple[Path, str]) -> subprocess.CompletedProcess[str]:
    """Run a script with /bin/sh chrooted into a (shared, read-only) release root, in a private
    mount namespace with the host's /dev and the given (host dir, root path) binds, so nothing
    is written into the root itself and the binds vanish with the command."""
    mounts = [f"mount --rbind /dev {shlex.quote(os.fspath(root / 'dev'))}"]
    mounts += [f"mount -o bind {shlex.quote(os.fspath(src))} {shlex.quote(os.fspath(root) + dst)}"
               for src, dst in binds]
    inner = " && ".join([*mounts, f"exec chroot {shlex.quote(os.fspath(root))} /bin/sh -c "
                                  f"{shlex.quote(script)}"])
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                          capture_output=True, text=True, timeout=300, check=False)


def tree_signature(root: Path) -> dict[str, tuple[str, int, str, str | None]]:
    return {p: (n.kind, n.mode, n.sha256, n.target)
            for p, n in releases.tree_from_dir(root).items()}


@pytest.fixture(scope="module")
def build() -> releases.Build:
    t0 = time.monotonic()
    b = releases.ensure_built(CACHE_DIR)
    print(f"ensure_built: {time.monotonic() - t0:.2f}s, build timings {b.info['timings']}")
    return b


@pytest.fixture(scope="module")
def lab_services(build: releases.Build, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, Any]]:
    lab_dir = tmp_path_factory.mktemp("svc") / "lab"
    t0 = time.monotonic()
    state = services.start_services(lab_dir, CACHE_DIR)
    print(f"start_services: {time.monotonic() - t0:.2f}s")
    try:
        yield state
    finally:
        services.stop_services(state)


@pytest.fixture(scope="module")
def catalog(lab_services: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(lab_services["catalog"]).read_text())


def all_refs(catalog: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) of every release, delta and supervisor image of the catalog."""
    refs = [(r["repository"], r["tag"], r["digest"]) for r in catalog["releases"]]
    refs += [(d["repository"], d["tag"], d["digest"]) for r in catalog["releases"]
             for d in r["deltas"]]
    refs += [(s["repository"], s["tag"], s["digest"]) for s in catalog["supervisors"]]
    return refs


# ==== part 1: artifacts ========================================================================

def test_build_is_cached_and_fast(build: releases.Build) -> None:
    t0 = time.monotonic()
    again = releases.ensure_built(CACHE_DIR)
    assert time.monotonic() - t0 < 1.0
    assert again.key == build.key == releases.build_key()
    assert {(r.device_type, r.version) for r in releases.known_releases()} == {
        (r["device_type"], r["version"]) for r in build.info["releases"]}


def test_device_root_has_no_python_and_its_tools_run(build: releases.Build) -> None:
    root = releases.release_rootfs(CACHE_DIR, "genericx86-64-ext", "2.113.0")
    assert not list(root.rglob("python*"))
    probe = ("command -v python3 || command -v python || echo no-python;"
             " for t in bash jq curl tar mkfs.ext4 e2fsck tune2fs resize2fs dumpe2fs skopeo umoci"
             " flock sha256sum mount umount sshd ssh-keygen sleep reboot; do"
             " command -v $t >/dev/null || echo missing-$t; done;"
             " tar --version | head -n 1; bash --version | head -n 1; skopeo --version;"
             " readlink /bin/sh; test -x /usr/lib/openssh/sftp-server && echo sftp")
    proc = in_root(root, probe)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "no-python" in out and "missing-" not in out, out
    assert "GNU tar" in out and "GNU bash" in out and "skopeo version" in out, out
    assert "bash\nsftp" in out, out  # /bin/sh is bash (PATH wins over busybox applets)
    sshd_cfg = (root / "etc/ssh/sshd_config").read_text()
    for line in ("HostKey /mnt/state/ssh/ssh_host_ed25519_key", "UsePAM no",
                 "AuthorizedKeysFile /mnt/state/ssh/authorized_keys", "PrintLastLog no",
                 "PermitRootLogin prohibit-password", "Subsystem sftp"):
        assert line in sshd_cfg
    policy = json.loads((root / "etc/containers/policy.json").read_text())
    assert policy["default"] == [{"type": "insecureAcceptAnything"}]
    for mp in ("mnt/boot", "mnt/state", "mnt/data", "mnt/sysroot/active", "mnt/sysroot/inactive",
               "run", "tmp", "var/lock", "var/volatile", "dev", "proc", "sys"):
        assert (root / mp).is_dir(), mp


@pytest.mark.parametrize("rel", releases.known_releases(), ids=lambda r: r.name)
def test_release_root_contents(build: releases.Build, rel: releases.Release) -> None:
    root = releases.release_rootfs(CACHE_DIR, rel.device_type, rel.version)
    proc = subprocess.run(["sha256sum", "-c", "--quiet", "--strict", releases.ROOTFS_SHA256],
                          cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = {line.split("  ./", 1)[1] for line in
              (root / releases.ROOTFS_SHA256).read_text().splitlines()}
    files = {p for p, n in releases.tree_from_dir(root).items() if n.kind == "file"}
    assert listed == files - {releases.ROOTFS_SHA256}
    osr = dict(line.split("=", 1) for line in (root / "etc/os-release").read_text().splitlines())
    assert osr["VERSION"] == osr["VERSION_ID"] == f'"{rel.version}"'
    assert osr["SLUG"] == f'"{rel.device_type}"' and osr["ID"] == '"balena-os"'
    assert osr["OSFLEET_ARCH"] == f'"{rel.arch}"'
    for key in ("NAME", "PRETTY_NAME", "MACHINE", "META_BALENA_VERSION"):
        assert key in osr
    conf = (root / "etc/balena-supervisor/supervisor.conf").read_text()
    assert f"SUPERVISOR_VERSION=v{rel.supervisor_version}\n" in conf
    boot = root / "resin-boot"
    kernel = (boot / rel.kernel).stat().st_size
    assert 1 << 20 <= kernel < 2 << 20
    for name in ("balenaos.fingerprint", "config.txt", "splash/balena-logo.png",
                 "EFI/BOOT/grub.cfg"):
        assert (boot / name).is_file(), name
    assert list(boot.glob("overlays/*.dtbo"))
    fingerprint = (boot / "balenaos.fingerprint").read_text().splitlines()
    for line in fingerprint:
        md5, path = line.split("  ")
        assert hashlib.md5((boot / path.lstrip("/")).read_bytes()).hexdigest() == md5
    assert len(list((root / "usr/share/osfleet-content").rglob("item-*"))) >= 290
    healthcheck = (root / "usr/lib/balena/balena-healthcheck").read_text()
    init = (root / "sbin/init").read_text()
    assert ("lab fault: health" in healthcheck) == (rel.lab_fault == "health")
    assert ("lab fault: boot" in init) == (rel.lab_fault == "boot")
    rollback = (root / "usr/bin/rollback-health").read_text()
    assert ("NOT rolling back" in rollback) == (rel.lab_fault == "norollback")


def test_rootfs_sha256_detects_a_changed_file(build: releases.Build, tmp_path: Path) -> None:
    copy = tmp_path / "root"
    copy.mkdir()
    source = releases.release_rootfs(CACHE_DIR, "genericx86-64-ext", "2.88.4")
    sh('cp -a "$1/." "$2/"', os.fspath(source), os.fspath(copy))
    (copy / "usr/bin/systemctl").write_text("#!/bin/sh\nexit 0\n")
    proc = subprocess.run(["sha256sum", "-c", "--quiet", releases.ROOTFS_SHA256], cwd=copy,
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "usr/bin/systemctl: FAILED" in proc.stdout


def test_releases_change_between_versions(build: releases.Build) -> None:
    """Consecutive releases share most content: some files change, some come, some go."""
    a = releases.tree_from_dir(releases.release_rootfs(CACHE_DIR, "genericx86-64-ext", "2.88.4"))
    b = releases.tree_from_dir(releases.release_rootfs(CACHE_DIR, "genericx86-64-ext", "2.113.0"))
    content = "usr/share/osfleet-content/"
    old = {p: n for p, n in a.items() if p.startswith(content) and n.kind == "file"}
    new = {p: n for p, n in b.items() if p.startswith(content) and n.kind == "file"}
    same = [p for p in old if p in new and new[p].same_as(old[p])]
    changed = [p for p in old if p in new and not new[p].same_as(old[p])]
    assert len(same) > 0.7 * len(old)
    assert changed and set(new) - set(old) and set(old) - set(new)
    boot_a = {p for p in a if p.startswith("resin-boot/")}
    boot_b = {p for p in b if p.startswith("resin-boot/")}
    assert boot_a - boot_b and boot_b - boot_a  # boot files added and removed


def delta_pairs() -> list[tuple[str, str, str]]:
    return [(dt.name, frm, to) for dt in releases.device_types().values() for frm, to in dt.deltas]


@pytest.mark.parametrize("dt,frm,to", delta_pairs(), ids=str)
def test_delta_reproduces_target_root(build: releases.Build, tmp_path: Path, dt: str, frm: str,
                                      to: str) -> None:
    """Apply the delta layer onto a copy of the `from` root with the device's own shell and GNU
    tar (chrooted into the `from` release), then compare with the `to` root, bit for bit."""
    entry = build.release_info(dt, to)
    delta = next(d for d in entry["deltas"] if d["from"] == frm)
    manifest = json.loads((build.oci_dir / "blobs/sha256" / delta["digest"].split(":")[1])
                          .read_bytes())
    assert len(manifest["layers"]) == 1
    layer = build.oci_dir / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    names = [m.name for m in releases.iter_layer_entries(layer)]
    assert any(n.rpartition("/")[2].startswith(".wh.") for n in names), "no whiteout in delta"
    assert not any(".wh..wh..opq" in n for n in names)
    from_root = releases.release_rootfs(CACHE_DIR, dt, frm)
    to_root = releases.release_rootfs(CACHE_DIR, dt, to)
    work = tmp_path / "work"
    (work / "target").mkdir(parents=True)
    sh('cp -a "$1/." "$2/"', os.fspath(from_root), os.fspath(work / "target"))
    shutil.copyfile(layer, work / "delta.tar.gz")
    script = APPLY_LAYER_SH + "apply_layer /mnt/data/delta.tar.gz /mnt/data/target"
    proc = in_root(from_root, script, (work, "/mnt/data"))
    assert proc.returncode == 0, proc.stderr
    assert tree_signature(work / "target") == tree_signature(to_root)
    proc = subprocess.run(["sha256sum", "-c", "--quiet", releases.ROOTFS_SHA256],
                          cwd=work / "target", capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_catalog_document(build: releases.Build, catalog: dict[str, Any],
                          lab_services: dict[str, Any]) -> None:
    assert catalog["schema"] == 1 and catalog["insecure_registries"] is True
    assert catalog["registries"] == lab_services["registries"]
    assert catalog["supervisor_repository"] == "osfleet/balena-supervisor"
    assert catalog["device_types"]["jetson-xavier"] == {
        "arch": "aarch64", "machine": "jetson-xavier", "min_takeover_version": "6.0.50",
        "name": "Nvidia Jetson Xavier AGX"}
    by_key = {(r["device_type"], r["version"]): r for r in catalog["releases"]}
    assert by_key[("genericx86-64-ext", "2.115.0")][releases.LAB_EXTENSION] == {"fault": "health"}
    assert by_key[("genericx86-64-ext", "2.115.1")][releases.LAB_EXTENSION] == {"fault": "boot"}
    assert by_key[("genericx86-64-ext", "2.113.0")][releases.LAB_EXTENSION] == {"fault": None}
    assert not any("lab_fault" in r for r in catalog["releases"]), "the lab's fault is in its extension only"
    assert by_key[("jetson-xavier", "6.1.0")]["layout"] == "l4t-r35"
    assert releases.layout("l4t-r35") != releases.layout("l4t-r32")
    assert {d["from"] for d in by_key[("genericx86-64-ext", "2.114.1")]["deltas"]} == {
        "2.113.0", "2.88.4"}
    assert by_key[("genericx86-64-ext", "2.114.1")]["supervisor_version"] == by_key[
        ("genericx86-64-ext", "2.113.0")]["supervisor_version"] == "14.11.2"
    for rel in catalog["releases"]:
        assert rel["repository"] == f"osfleet/{rel['device_type']}"
        assert rel["digest"].startswith("sha256:") and rel["size"] > 20_000_000
        for delta in rel["deltas"]:
            assert delta["repository"] == f"osfleet/{rel['device_type']}-delta"
            assert delta["tag"] == f"{delta['from']}-{rel['version']}"
            assert delta["size"] < rel["size"] / 5
    supervisors = catalog["supervisors"]
    assert {s["tag"] for s in supervisors} == {"v14.0.8", "v14.11.2", "v14.9.4", "v16.1.0"}


def oci_blob(build: releases.Build, digest: str) -> bytes:
    return (build.oci_dir / "blobs/sha256" / digest.split(":")[1]).read_bytes()


def test_catalog_image_ids_and_unpacked_sizes(build: releases.Build, catalog: dict[str, Any]) -> None:
    """``image_id`` is the digest of the image's config (what an engine calls the image's id, also
    of an image loaded from a saved archive); ``size_unpacked`` is what its layers hold (file bytes
    and link targets: the sum of the engine's layerdb sizes)."""
    for rel in catalog["releases"]:
        manifest = json.loads(oci_blob(build, rel["digest"]))
        assert manifest["config"]["digest"] == rel["image_id"], rel["version"]
        config = oci_blob(build, rel["image_id"])
        assert f"sha256:{hashlib.sha256(config).hexdigest()}" == rel["image_id"]
        assert json.loads(config)["config"]["Env"][0].startswith("PATH=")
        unpacked = 0
        for layer in manifest["layers"]:
            for entry in releases.iter_layer_entries(build.oci_dir / "blobs/sha256" / layer["digest"].split(":")[1]):
                unpacked += entry.size if entry.isfile() else len(entry.linkname.encode()) if entry.issym() else 0
        assert unpacked == rel["size_unpacked"], rel["version"]


def test_catalog_facts_are_what_the_catalog_module_reads(build: releases.Build) -> None:
    """The build describes each release with osfleet.hup.catalog's image reader on its OCI layout and
    holds the lab's own model against it: the build's entries are the reader's, a disagreement fails."""
    entries = {r["ref"]: dict(r) for r in build.info["releases"]}
    releases.describe_releases(build.oci_dir, entries)
    assert list(entries.values()) == build.info["releases"]
    first = next(iter(entries.values()))
    wrong = {first["ref"]: {**first, "size_unpacked": first["size_unpacked"] + 1}}
    with pytest.raises(LabError, match=r"osfleet.hup.catalog reads \(image, lab model\) \{'size_unpacked': "):
        releases.describe_releases(build.oci_dir, wrong)


@pytest.mark.parametrize("dt,frm,to", delta_pairs(), ids=str)
def test_delta_carries_the_balena_delta_labels(build: releases.Build, dt: str, frm: str, to: str) -> None:
    """A delta names its base by image id and carries the target's config (io.resin.delta.*, as
    balena-engine deltas do), plus per target layer: reuse the base's, or the listing to rebuild."""
    base, target = build.release_info(dt, frm), build.release_info(dt, to)
    delta = next(d for d in target["deltas"] if d["from"] == frm)
    manifest = json.loads(oci_blob(build, delta["digest"]))
    labels = json.loads(oci_blob(build, manifest["config"]["digest"]))["config"]["Labels"]
    assert labels["io.resin.delta.base"] == base["image_id"]
    config = labels["io.resin.delta.config"].encode()
    assert f"sha256:{hashlib.sha256(config).hexdigest()}" == target["image_id"]
    spec = json.loads(labels["io.osfleet.delta.layers"])
    assert [s["diff_id"] for s in spec] == target["diff_ids"] == json.loads(config)["rootfs"]["diff_ids"]
    assert spec[0] == {"diff_id": base["diff_ids"][0], "reuse": True}  # the shared base layer
    listing = spec[1]["listing"].splitlines()
    release_layer = build.oci_dir / "blobs/sha256" / target["layers"][1].split(":")[1]
    entries = {e.name.rstrip("/") for e in releases.iter_layer_entries(release_layer)}
    assert {line.split("\t")[0] for line in listing} == entries
    assert listing == sorted(listing, key=str.encode)


@pytest.mark.parametrize("which", ["primary", "fallback"])
def test_registry_serves_catalog_digests(catalog: dict[str, Any], which: str) -> None:
    registry = catalog["registries"][which]
    for repo, tag, digest in all_refs(catalog):
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{registry}/{repo}:{tag}"],
                             capture_output=True, check=True, timeout=60).stdout
        assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == digest, f"{repo}:{tag}"


def test_copy_by_digest_unpacks_to_the_release_root(
        catalog: dict[str, Any], tmp_path: Path) -> None:
    rel = next(r for r in catalog["releases"] if r["version"] == "2.113.0")
    ref = f"docker://{catalog['registries']['fallback']}/{rel['repository']}@{rel['digest']}"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", ref,
                    f"oci:{tmp_path / 'oci'}:x"], check=True, timeout=120)
    index = json.loads((tmp_path / "oci/index.json").read_text())
    assert index["manifests"][0]["digest"] == rel["digest"]
    manifest = json.loads((tmp_path / "oci/blobs/sha256" / rel["digest"].split(":")[1])
                          .read_text())
    root = tmp_path / "root"
    root.mkdir()
    for layer in manifest["layers"]:
        blob = tmp_path / "oci/blobs/sha256" / layer["digest"].split(":")[1]
        subprocess.run(["tar", "-xzf", blob, "-C", root, "--numeric-owner"], check=True)
    assert tree_signature(root) == tree_signature(
        releases.release_rootfs(CACHE_DIR, rel["device_type"], rel["version"]))


def test_http_serves_catalog_with_ranges(lab_services: dict[str, Any]) -> None:
    port = int(lab_services["http"].rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/catalog.json", headers={"Range": "bytes=0-9"})
    resp = conn.getresponse()
    assert resp.status == 206 and resp.read() == Path(lab_services["catalog"]).read_bytes()[:10]
    conn.close()


def test_services_stop_and_crash_recovery(build: releases.Build, tmp_path: Path) -> None:
    t0 = time.monotonic()
    state = services.start_services(tmp_path / "lab", CACHE_DIR)
    elapsed = time.monotonic() - t0
    print(f"start_services (fresh lab dir): {elapsed:.2f}s")
    assert elapsed < 5
    procs = state["processes"]
    assert set(procs) == {"registry-primary", "registry-fallback", "http"}
    # what a crashed caller still knows: only the lab directory
    services.stop_services({"lab_dir": state["lab_dir"]})
    for entry in procs.values():
        assert not Path(f"/proc/{entry['pid']}").exists() or not services.proc_alive(
            entry["pid"], entry["start"])
    services.stop_services(state)  # idempotent
    # the cache was not touched by the lab's copy: blobs are hard links, links are copies
    blob = next((tmp_path / "lab/registry-primary/storage").rglob("data"))
    assert blob.stat().st_nlink > 1
    link = next((tmp_path / "lab/registry-primary/storage").rglob("link"))
    assert link.stat().st_nlink == 1


def test_digests_are_reproducible(build: releases.Build, tmp_path: Path) -> None:
    """A second build from scratch (empty cache) gives the same bytes and digests."""
    t0 = time.monotonic()
    other = releases.ensure_built(tmp_path / "cache")
    elapsed = time.monotonic() - t0
    print(f"ensure_built from scratch: {elapsed:.1f}s {other.info['timings']}")
    assert elapsed < 60
    assert other.key == build.key

    def digests(b: releases.Build) -> list[Any]:
        return [(r["device_type"], r["version"], r["digest"], r["layers"],
                 [d["digest"] for d in r["deltas"]]) for r in b.info["releases"]] + [
            s["digest"] for s in b.info["supervisors"]]

    assert digests(other) == digests(build)


@pytest.mark.parametrize("profile", ["ab", "balenaos"])
def test_disk_image(build: releases.Build, tmp_path: Path, profile: str) -> None:
    """The disk image of a release for a device profile: the release's layout; resin-rootA holds
    the release with its stamp, as a plain root (ab) or as a hostapp (balenaos: the engine data
    root, the ``current`` link to the hostapp's container, ``boot`` and ``sbin/init`` through it,
    the release's image as that container's image), the data partition of the profile."""
    rel = releases.find_release("jetson-xavier", "6.1.0")
    t0 = time.monotonic()
    path = releases.build_disk_image(build, rel, profile)
    print(f"disk image {rel.name} ({profile}): {time.monotonic() - t0:.1f}s")
    info = releases.disk_image_info(build, rel.device_type, rel.version, profile)
    assert info and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["file"] == path.name and (profile == "ab") == (path.name == f"{rel.name}.img.gz"), info
    raw = tmp_path / "disk.img"
    with gzip.open(path) as src, open(raw, "wb") as dst:
        shutil.copyfileobj(src, dst, 4 << 20)
    table = json.loads(subprocess.run(["sfdisk", "--json", raw], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]["partitions"]
    assert [(p["name"], p["size"] // 2048) for p in table] == releases.layout(rel.layout)
    entry = build.release_info(rel.device_type, rel.version)

    def mounted(index: int, check: Any) -> None:
        part = table[index]
        loop = subprocess.run(["losetup", "-f", "--show", "-r", "-o", str(part["start"] * 512),
                               "--sizelimit", str(part["size"] * 512), raw],
                              capture_output=True, text=True, check=True).stdout.strip()
        mnt = tmp_path / f"mnt{index}"
        mnt.mkdir()
        try:
            subprocess.run(["mount", "-o", "ro", loop, mnt], check=True)
            try:
                check(mnt)
            finally:
                subprocess.run(["umount", mnt], check=True)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)

    def root_a(mnt: Path) -> None:
        stamp = json.loads((mnt / releases.STAMP).read_text())
        assert stamp["digest"] == entry["digest"] and stamp["version"] == rel.version
        if profile == "ab":
            subprocess.run(["sha256sum", "-c", "--quiet", releases.ROOTFS_SHA256], cwd=mnt, check=True)
            return
        current = os.readlink(mnt / "current")
        cid = current.rsplit("/", 1)[-1]
        assert current.startswith("hostapps/") and len(cid) == 64, current
        assert os.readlink(mnt / "boot") == "current/boot" and (mnt / "sbin/init").is_symlink()
        assert (mnt / "boot/init").is_file() and (mnt / "boot" / rel.kernel).is_file()
        config = json.loads((mnt / "balena/containers" / cid / "config.v2.json").read_text())
        assert config["ID"] == cid and config["Image"] == entry["image_id"], config
        assert not (mnt / "etc/os-release").exists(), "the OS lives in the engine's layers, not at the top"

    def data(mnt: Path) -> None:
        assert (mnt / "resin-data").is_dir() == (profile == "balenaos"), sorted(os.listdir(mnt))

    mounted(1, root_a)
    mounted(4, data)


# ==== part 2: the device OS on lab devices =====================================================

WRITE_INACTIVE_SH = APPLY_LAYER_SH + r"""
set -eu
. /usr/lib/osfleet/functions.sh
REF=$1 KIND=$2
active=$(root_label_of_mount /)
inactive=$(other_root_label "$active")
W=/mnt/data/osfleet-test
rm -rf "$W" && mkdir -p "$W"
skopeo copy --quiet --src-tls-verify=false "docker://$REF" "dir:$W/img"
if awk '$2 == "/mnt/sysroot/inactive" { f = 1 } END { exit !f }' /proc/mounts; then
    umount /mnt/sysroot/inactive
fi
mkfs.ext4 -q -F -L "$inactive" "/dev/disk/by-partlabel/$inactive"
mount "/dev/disk/by-partlabel/$inactive" /mnt/sysroot/inactive
T=/mnt/sysroot/inactive
if [ "$KIND" = delta ]; then
    cp -a /mnt/sysroot/active/. "$T/"
    rm -f "$T/.osfleet-release.json"
fi
for d in $(jq -r '.layers[].digest' "$W/img/manifest.json"); do
    apply_layer "$W/img/${d#sha256:}" "$T"
done
(cd "$T" && sha256sum -c -s usr/share/osfleet/rootfs.sha256)
/usr/lib/osfleet/run-in-root "$T" /usr/bin/env DURING_UPDATE=1 /usr/bin/hostapp-update-hooks
rm -rf "$W"
echo "staged $inactive"
"""
REBOOT_CMD = ("setsid sh -c 'sleep 1; echo $EPOCHREALTIME >/mnt/data/osfleet-test-reboot-at;"
              " reboot' >/dev/null 2>&1 </dev/null & sleep 0.5")


@pytest.fixture(scope="module")
def fleet() -> Iterator[LabHandle]:
    prefix = unique_prefix("r")
    try:
        yield bring_up(prefix, 5, "--os", "2.88.4")
    finally:
        labctl("down", "--prefix", prefix, check=False)


def fleet_catalog(lab: LabHandle) -> dict[str, Any]:
    return json.loads((lab.dir / "catalog.json").read_text())


def image_ref(catalog: dict[str, Any], dt: str, to: str, frm: str | None) -> tuple[str, str]:
    rel = next(r for r in catalog["releases"] if (r["device_type"], r["version"]) == (dt, to))
    reg = catalog["registries"]["primary"]
    if frm is None:
        return f"{reg}/{rel['repository']}@{rel['digest']}", "full"
    delta = next(d for d in rel["deltas"] if d["from"] == frm)
    return f"{reg}/{delta['repository']}@{delta['digest']}", "delta"


def stage(dev: Device, catalog: dict[str, Any], to: str, frm: str | None = None) -> str:
    ref, kind = image_ref(catalog, "genericx86-64-ext", to, frm)
    cmd = f"sh -c {shlex.quote(WRITE_INACTIVE_SH)} sh {shlex.quote(ref)} {kind}"
    return dev.check(cmd, timeout=180)


def wait_console(dev: Device, first: str, then: str, timeout: float) -> str:
    """Wait until the console shows ``then`` after the last ``first`` line (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        console = dev.console()
        at = console.rfind(first)
        if at >= 0 and then in console[at:]:
            return console
        time.sleep(0.5)
    raise AssertionError(f"{dev.name}: console never showed {then!r} after {first!r}:\n"
                         f"{dev.console()[-2000:]}")


STATUS = ("cat /proc/sys/kernel/random/boot_id; . /usr/lib/osfleet/functions.sh;"
          " echo root=$(root_label_of_mount /); sed -n 's/^VERSION=//p' /etc/os-release;"
          " cat /mnt/boot/resinOS_uEnv.txt; ls /mnt/state")


def test_device_os_basics(fleet: LabHandle) -> None:
    dev = fleet.devices()[0]
    assert "OSFLEET-BOOT-OK 2.88.4 resin-rootA" in dev.console()
    out = dev.check("systemctl list; command -v python3 python || echo no-python;"
                    " cat /run/balena-supervisor/state; /usr/lib/balena/balena-healthcheck &&"
                    " echo healthy; awk '$2 == \"/etc/balena-supervisor\"' /proc/mounts;"
                    " awk '$2 == \"/\" {print $4}' /proc/mounts")
    for svc in ("balena", "balena-supervisor", "user-app", "sshd"):
        assert f"{svc}.service" in out and f"{svc}.service".ljust(24) + " active" in out, out
    assert "no-python" in out and "version=14.0.8" in out and "healthy" in out
    assert "/etc/balena-supervisor ext4" in out and out.rstrip().endswith("ro,relatime")
    rc, out, _err = dev.run("systemctl is-active no-such-service")
    assert rc == 5
    dev.check("systemctl stop user-app")
    rc, out, _err = dev.run("systemctl is-active user-app")
    assert (rc, out.strip()) == (3, "inactive")
    before = dev.check("wc -l < /mnt/data/user-app/heartbeat.log")
    time.sleep(1.2)
    assert dev.check("wc -l < /mnt/data/user-app/heartbeat.log") == before
    dev.check("systemctl start user-app && sleep 1.2")
    last = dev.check("tail -n 2 /mnt/data/user-app/heartbeat.log").split()
    assert int(last[2]) == int(last[0]) + 1 and float(last[3]) - float(last[1]) < 0.9
    # a child that just exited is a zombie until its parent reaps it (moments, longer on a loaded
    # machine); one that stays a zombie for seconds is never reaped
    zombies = ""
    for _attempt in range(10):
        zombies = dev.check("grep -l ') Z ' /proc/[0-9]*/stat 2>/dev/null | wc -l")
        if zombies.strip() == "0":
            break
        time.sleep(0.5)
    assert zombies.strip() == "0", dev.check("grep -h ') Z ' /proc/[0-9]*/stat 2>/dev/null || true")


def test_update_balena_supervisor(fleet: LabHandle) -> None:
    dev = fleet.devices()[1]
    registry = fleet_catalog(fleet)["registries"]["primary"]
    image = f"{registry}/osfleet/balena-supervisor:v14.11.2"
    out = dev.check(f"update-balena-supervisor -t -i {image} && sleep 1.2 &&"
                    " cat /run/balena-supervisor/state /etc/balena-supervisor/supervisor.conf")
    assert "version=14.11.2" in out and "SUPERVISOR_VERSION=v14.11.2" in out
    assert "already runs" in dev.check(f"update-balena-supervisor -t -i {image}")
    missing = f"{registry}/osfleet/balena-supervisor:v0.0.1"
    rc, _out, err = dev.run(f"update-balena-supervisor -t -i {missing}")
    assert rc == 1 and "unchanged" in err
    assert "SUPERVISOR_VERSION=v14.11.2" in dev.check(
        "cat /mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf")
    assert dev.check("systemctl is-active balena-supervisor").strip() == "active"


def test_update_commits_and_app_runs_until_reboot(fleet: LabHandle) -> None:
    dev = fleet.devices()[2]
    catalog = fleet_catalog(fleet)
    assert "staged resin-rootB" in stage(dev, catalog, "2.113.0", frm="2.88.4")
    uenv = dev.check("cat /mnt/boot/resinOS_uEnv.txt; ls /mnt/state")
    assert "resin_root_part=3\nupgrade_available=1" in uenv
    assert "rollback-health-breadcrumb" in uenv and "rollback-altboot-breadcrumb" in uenv
    assert "2.113.0" in dev.check("cat /mnt/boot/os-release")  # the new boot files
    old_boot = dev.boot_id()
    dev.run(REBOOT_CMD)
    out = wait_for(dev, "cat /run/rollback-health.state", "committed", 60)
    status = dev.check(STATUS)
    assert old_boot not in status and "root=resin-rootB" in status and '"2.113.0"' in status
    assert "upgrade_available=0" in status and "breadcrumb" not in status, out
    # the user app wrote until the reboot and continues its counter afterwards
    rebooted_at = float(dev.check("cat /mnt/data/osfleet-test-reboot-at"))
    lines = [line.split() for line in
             dev.check("cat /mnt/data/user-app/heartbeat.log").splitlines()]
    times = [float(t) for _count, t in lines]
    assert rebooted_at - max(t for t in times if t <= rebooted_at) < 0.6
    assert max(times) > rebooted_at + 1  # and it runs again after the reboot
    counters = [int(n) for n, _time in lines]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)


def test_health_fault_rolls_back(fleet: LabHandle) -> None:
    dev = fleet.devices()[3]
    assert "staged resin-rootB" in stage(dev, fleet_catalog(fleet), "2.115.0")
    old_boot = dev.boot_id()
    dev.run(REBOOT_CMD)
    # boots 2.115.0 from rootB, the health check fails 3 times, the old OS's hooks run, reboot
    wait_console(dev, "ROLLBACK-HEALTH rolled-back to 2.88.4", "OSFLEET-BOOT-OK 2.88.4 resin-rootA",
                 120)
    status = wait_for(dev, STATUS, "root=resin-rootA", 30)
    assert old_boot not in status and '"2.88.4"' in status and "rollback-health-triggered" in status
    assert "resin_root_part=2\nupgrade_available=0" in status and "breadcrumb" not in status
    console = dev.console()
    assert "OSFLEET-BOOT-OK 2.115.0 resin-rootB" in console
    assert "ROLLBACK-HEALTH rolled-back to 2.88.4" in console
    assert "2.88.4" in dev.check("cat /mnt/boot/os-release")  # old boot files back


def test_boot_fault_falls_back_to_old_root(fleet: LabHandle) -> None:
    dev = fleet.devices()[4]
    assert "staged resin-rootB" in stage(dev, fleet_catalog(fleet), "2.115.1")
    dev.run(REBOOT_CMD)
    # 2.115.1 cannot boot; after bootcount > 3 the bootloader boots rootA (env unchanged), whose
    # rollback-altboot restores its boot files and env and reboots
    wait_console(dev, "ROLLBACK-ALTBOOT", "OSFLEET-BOOT-OK 2.88.4 resin-rootA", 180)
    status = wait_for(dev, STATUS, "root=resin-rootA", 30)
    assert "rollback-altboot-triggered" in status
    assert "resin_root_part=2\nupgrade_available=0" in status
    assert "breadcrumb" not in status
    console = dev.console()
    assert console.count("OSFLEET-BOOT-FAIL 2.115.1") >= 3 and "ROLLBACK-ALTBOOT" in console
    assert "bootcount.env" not in dev.check("ls /mnt/boot")


def test_catalog_root_listing_is_the_release_root(build: releases.Build, catalog: dict[str, Any]) -> None:
    """Each release's root_listing (issue 7 item 4) is the listing of its own full root, as the lab
    provisions it, never of a delta; releases differ."""
    for rel in catalog["releases"]:
        root = releases.release_rootfs(CACHE_DIR, rel["device_type"], rel["version"])
        listing = releases.root_listing(releases.tree_from_dir(root))
        assert rel["root_listing"] == {"sha256": hashlib.sha256(listing).hexdigest(), "entries": listing.count(b"\n")}, rel["version"]
        lines = listing.decode().splitlines()
        assert "sbin\td\t755\t0:0\t-\t-" in lines and "bin\tl\t777\t0:0\t7\tusr/bin" in lines
    assert len({r["root_listing"]["sha256"] for r in catalog["releases"]}) == len(catalog["releases"])
