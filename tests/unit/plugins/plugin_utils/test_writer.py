# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The export writer's shell functions, run for real on this machine (no device needed).

OCI layouts are built here with tarfile/gzip/hashlib; the layer application, the layout
verification, the cache probe and (against a throwaway local registry) the whole fetch script
run under busybox sh, dash and bash like on a device. The part of the write script that formats
and mounts the partition only runs on a lab device (tests/integration).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import typing as t
from pathlib import Path

import pytest
from osfleet_oci import Entry, tar_layer

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell as scripts
from ansible_collections.osfleet.hup.plugins.plugin_utils import writer as w
from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CACHE_MARKER as MARKER
from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import RootListing
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import FetchAttempt, FetchPlan
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.rootfs import RootfsPlan

SHELLS = [s for s in (["busybox", "sh"], ["dash"], ["bash"]) if shutil.which(s[0])]
LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_layer(entries: dict[str, Entry], compress: bool = True) -> bytes:
    raw = tar_layer(entries)
    return gzip.compress(raw, mtime=0) if compress else raw


def put_blob(layout: Path, data: bytes) -> str:
    digest = sha(data)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def make_layout(layout: Path, layers: list[tuple[bytes, str]], tag: str = "test") -> str:
    """An OCI image layout with the given (blob, media type) layers; returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(layout, config), "size": len(config)},
        "layers": [{"mediaType": mt, "digest": put_blob(layout, blob), "size": len(blob)} for blob, mt in layers],
    }
    data = json.dumps(manifest).encode()
    digest = put_blob(layout, data)
    entry = {"mediaType": manifest["mediaType"], "digest": digest, "size": len(data),
             "annotations": {"org.opencontainers.image.ref.name": tag}}
    index = {"schemaVersion": 2, "manifests": [entry]}
    (layout / "index.json").write_text(json.dumps(index))
    return digest


def sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{sha(data)}  ./{name}\n" for name, data in sorted(files.items())).encode()


def run(shell: list[str], script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*shell, "-c", script, "osfleet", *args], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def tree(root: Path) -> dict[str, str]:
    """Every entry below root: file content, "dir" or "-> target"."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_text()
    return out


def library_call(call: str) -> str:
    """A script that runs one function of scripts/_lib.sh (with the preamble and what it needs)."""
    return scripts.library().text_for(call) + call


APPLY = library_call('osfleet_apply_image "$1" "$2" "$3"')
CHECK = library_call('osfleet_check_root "$1"')
VERIFY = library_call('osfleet_verify_layout "$1" "$2"')


def run_call(shell: list[str], call: scripts.Call, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a writer's script call under ``shell`` (its stdin piped in)."""
    argv, stdin = scripts.load(call.script).argv(**call.params)
    return subprocess.run([*shell, *argv[1:]], input=stdin, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


FINAL = {"usr/bin/app": b"app v2\n", "etc/conf": b"new\n", "etc/dir/f3": b"three\n", "keep": b"kept\n"}


def release_layers(uncompressed: bool = True) -> list[tuple[bytes, str]]:
    """Layer 1 lays down a tree; layer 2 removes and replaces parts of it with whiteouts."""
    layer1 = make_layer({
        "usr": "dir", "usr/bin": "dir", "usr/bin/app": b"app v1\n",
        "etc": "dir", "etc/conf": b"old\n", "etc/gone": b"x\n", "etc/dir": "dir", "etc/dir/f1": b"1\n", "etc/dir/.hidden": b"h\n",
        "opt": "dir", "opt/old": "dir", "opt/old/deep": b"d\n", "keep": b"kept\n",
    })
    listing = sums(FINAL)
    layer2 = make_layer({
        "./usr/bin/app": b"app v2\n", "etc/conf": b"new\n", "etc/.wh.gone": b"",
        "etc/dir/.wh..wh..opq": b"", "etc/dir/f3": b"three\n", ".wh.opt": b"",
        "usr/share": "dir", "usr/share/osfleet": "dir", "usr/share/osfleet/rootfs.sha256": listing,
    }, compress=not uncompressed)
    return [(layer1, LAYER_GZ), (layer2, LAYER_TAR if uncompressed else LAYER_GZ)]


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_apply_full_image_with_whiteouts(tmp_path: Path, shell: list[str]) -> None:
    digest = make_layout(tmp_path / "layout", release_layers())
    root = tmp_path / "root"
    root.mkdir()
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 0, res.stderr + res.stdout
    assert res.stdout.strip() == "2"
    got = tree(root)
    assert got["usr/bin/app"] == "app v2\n" and got["etc/conf"] == "new\n" and got["keep"] == "kept\n"
    assert "etc/gone" not in got and "opt" not in got, "whiteouts remove what lower layers wrote"
    assert [k for k in got if k.startswith("etc/dir/")] == ["etc/dir/f3"], "the opaque whiteout clears the directory first"
    assert not [k for k in got if ".wh." in k], "whiteout entries are never extracted"
    check = run(shell, CHECK, str(root))
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_check_root_counts_the_files_that_differ(tmp_path: Path, shell: list[str]) -> None:
    root = tmp_path / "root"
    (root / "usr/share/osfleet").mkdir(parents=True)
    files = {"a": b"a\n", "b": b"b\n", "c": b"c\n"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "usr/share/osfleet/rootfs.sha256").write_bytes(sums(files))
    assert run(shell, CHECK, str(root)).returncode == 0
    (root / "a").write_bytes(b"changed\n")
    (root / "b").unlink()
    res = run(shell, CHECK, str(root))
    assert res.returncode == 1
    assert res.stdout.startswith("the written root does not match the release: 2 files differ (./a: FAILED")
    (root / "usr/share/osfleet/rootfs.sha256").unlink()
    assert "has no usr/share/osfleet/rootfs.sha256" in run(shell, CHECK, str(root)).stdout


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_apply_delta_on_a_copy_of_the_base(tmp_path: Path, shell: list[str]) -> None:
    base_files = {"usr/bin/app": b"app v1\n", "etc/conf": b"c\n", "etc/removed": b"r\n", "same": b"s\n"}
    final = {"usr/bin/app": b"app v2\n", "etc/conf": b"c\n", "same": b"s\n", "added": b"new\n"}
    root = tmp_path / "root"
    for name, data in base_files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    delta = make_layer({"usr/bin/app": b"app v2\n", "etc/.wh.removed": b"", "added": b"new\n",
                        "usr/share/osfleet/rootfs.sha256": sums(final)})
    digest = make_layout(tmp_path / "delta", [(delta, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "delta"), digest, str(root))
    assert res.returncode == 0, res.stderr + res.stdout
    got = tree(root)
    assert "etc/removed" not in got and got["added"] == "new\n" and got["usr/bin/app"] == "app v2\n"
    assert run(shell, CHECK, str(root)).returncode == 0


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_whiteout_through_a_symlink_is_refused(tmp_path: Path, shell: list[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("must survive")
    layer1 = make_layer({"evil": ("symlink", str(outside))})
    layer2 = make_layer({"evil/.wh.victim": b""})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    root = tmp_path / "root"
    root.mkdir()
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 1
    assert f"writes below evil, a symbolic link to {outside} that leaves the root" in res.stdout
    assert tree(outside) == {"victim": "must survive"}


# --- item 2 of issue 7: nothing outside the target root is written or read ------------------------

def outside_tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory of the 'running system' that a crafted image tries to reach."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "victim").write_text("must survive\n")
    (outside / "sub" / "deep").write_text("deep\n")
    return outside, tree(outside)


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
@pytest.mark.parametrize("link", ["absolute", "dotdot"])
def test_a_later_layer_never_writes_through_a_link_of_an_earlier_one(tmp_path: Path, shell: list[str], link: str) -> None:
    """Layer 1 leaves d -> (outside), layer 2 writes d/x and d/sub/deep: refused, the outside untouched."""
    outside, before = outside_tree(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    target = str(outside) if link == "absolute" else "../outside"
    layer1 = make_layer({"d": ("symlink", target), "keep": b"k\n"})
    layer2 = make_layer({"d/x": b"planted\n", "d/sub/deep": b"overwritten\n", "d/.wh.victim": b""})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 1, res.stdout
    refusal = (f"writes below d, a symbolic link to {target} that leaves the root" if link == "absolute"
               else f"whiteout d/.wh.victim: d leaves {root}")  # the whiteout's directory is resolved first
    assert refusal in res.stdout
    assert tree(outside) == before, "nothing outside the target root is written"
    layer2 = make_layer({"d/x": b"planted\n", "d/sub/deep": b"overwritten\n"})
    digest = make_layout(tmp_path / "layout2", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    (tmp_path / "root2").mkdir()
    res = run(shell, APPLY, str(tmp_path / "layout2"), digest, str(tmp_path / "root2"))
    assert res.returncode == 1 and f"writes below d, a symbolic link to {target} that leaves the root" in res.stdout, res.stdout
    assert tree(outside) == before


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_a_layer_may_replace_a_link_that_leaves_the_root(tmp_path: Path, shell: list[str]) -> None:
    """An explicit directory entry replaces the earlier layer's link (the engine's rule); an
    absolute link that no layer touches stays as it was."""
    outside, before = outside_tree(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    layer1 = make_layer({"d": ("symlink", str(outside)), "etc": "dir", "etc/mtab": ("symlink", "/proc/mounts"),
                         "data": ("symlink", str(outside))})
    layer2 = make_layer({"d": "dir", "d/x": b"mine\n"})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    got = tree(root)
    assert got["d"] == "dir" and got["d/x"] == "mine\n"
    assert got["etc/mtab"] == "-> /proc/mounts" and got["data"] == f"-> {outside}"
    assert not [k for k in got if ".osfleet-held" in k]
    assert tree(outside) == before


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_links_inside_the_root_are_followed_as_before(tmp_path: Path, shell: list[str]) -> None:
    """sbin -> usr/sbin (merged /usr): a layer's sbin/init lands in usr/sbin, in the same layer and a later one."""
    root = tmp_path / "root"
    root.mkdir()
    layer1 = make_layer({"usr": "dir", "usr/sbin": "dir", "sbin": ("symlink", "usr/sbin"), "usr/lib": "dir",
                         "lib": ("symlink", "usr/lib"), "lib/one": b"1\n"})
    layer2 = make_layer({"sbin": ("symlink", "usr/sbin"), "sbin/init": b"init\n", "lib/two": b"2\n", "lib/.wh.one": b""})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    got = tree(root)
    assert got["usr/sbin/init"] == "init\n" and got["sbin"] == "-> usr/sbin"
    assert got["usr/lib/two"] == "2\n" and "usr/lib/one" not in got and not [k for k in got if ".wh." in k]


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_a_directory_entry_replaces_a_link_inside_the_root_too(tmp_path: Path, shell: list[str]) -> None:
    """The engines' rule for a layer's directory where a lower layer left a link (or a file): the layer's
    directory replaces it, also when the link stays inside the root (sbin -> usr/sbin). GNU tar alone keeps
    the link and writes below it, so the written root was not the image's (found by the root listing, issue 7
    item 4: the lab's releases put a sbin/ directory with init over the base's sbin link)."""
    root = tmp_path / "root"
    root.mkdir()
    layer1 = make_layer({"usr": "dir", "usr/sbin": "dir", "usr/sbin/tool": b"t\n", "sbin": ("symlink", "usr/sbin"), "etc": b"a file\n"})
    layer2 = make_layer({"sbin": "dir", "sbin/init": b"init\n", "etc": "dir", "etc/conf": b"c\n"})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    got = tree(root)
    assert (got["sbin"], got["sbin/init"], got["etc"], got["etc/conf"]) == ("dir", "init\n", "dir", "c\n"), got
    assert "usr/sbin/init" not in got and got["usr/sbin/tool"] == "t\n"


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_a_delta_never_writes_through_a_link_of_its_base(tmp_path: Path, shell: list[str]) -> None:
    """The delta base (a copy of the active root) holds data -> /outside: the delta's data/x is refused."""
    outside, before = outside_tree(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to(outside)
    (root / "usr").mkdir()
    (root / "usr" / "lib").symlink_to(outside / "sub")
    delta = make_layer({"data/x": b"planted\n"})
    digest = make_layout(tmp_path / "delta", [(delta, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "delta"), digest, str(root))
    assert res.returncode == 1 and "writes below data, a symbolic link to" in res.stdout, res.stdout
    delta2 = make_layer({"usr/lib/deep": b"overwritten\n"})
    digest2 = make_layout(tmp_path / "delta2", [(delta2, LAYER_GZ)])
    res = run(shell, APPLY, str(tmp_path / "delta2"), digest2, str(root))
    assert res.returncode == 1 and "writes below usr/lib, a symbolic link to" in res.stdout, res.stdout
    assert tree(outside) == before


IN_ROOT = library_call('osfleet_in_root "$1" "$2" ${3:+"$3"}')


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_paths_resolve_inside_the_root(tmp_path: Path, shell: list[str]) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/abs").symlink_to("/usr/lib")
    (root / "etc/up").symlink_to("../../..")
    (root / "etc/loop").symlink_to("loop")
    cases = {
        ("etc/os-release",): f"{root}/usr/lib/os-release",
        ("/etc/abs/x",): f"{root}/usr/lib/x",
        ("etc/abs/../etc",): f"{root}/usr/etc",
        ("etc/abs", "parent"): f"{root}/etc/abs",
        ("etc/abs/y", "parent"): f"{root}/usr/lib/y",
    }
    for args, want in cases.items():
        res = run(shell, IN_ROOT, str(root), *args)
        assert (res.returncode, res.stdout.strip()) == (0, want), (args, res.stdout)
    for path, why in (("etc/up/x", "leaves"), ("../x", "leaves"), ("etc/loop/x", "too many levels")):
        res = run(shell, IN_ROOT, str(root), path)
        assert res.returncode == 1 and why in res.stdout, (path, res.stdout)


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_check_root_never_reads_the_running_system(tmp_path: Path, shell: list[str]) -> None:
    """Absolute links in the written root name files inside it, not the running system's."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "os-release").write_bytes(b'VERSION="2.113.0"\n')
    root = tmp_path / "root"
    (root / "usr/share/osfleet").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to(outside / "os-release")
    (root / "usr/share/osfleet/rootfs.sha256").write_bytes(sums({"etc/os-release": b'VERSION="2.113.0"\n'}))
    res = run(shell, CHECK, str(root))
    assert res.returncode == 1 and "1 files differ" in res.stdout, res.stdout
    # the same content inside the root, where the link really points for the device: OK
    (root / str(outside).lstrip("/")).mkdir(parents=True)
    (root / str(outside).lstrip("/") / "os-release").write_bytes(b'VERSION="2.113.0"\n')
    assert run(shell, CHECK, str(root)).returncode == 0
    # a list that is itself a link to the running system's list is no list
    (root / "usr/share/osfleet/rootfs.sha256").unlink()
    (outside / "rootfs.sha256").write_bytes(sums({}))
    (root / "usr/share/osfleet/rootfs.sha256").symlink_to(outside / "rootfs.sha256")
    res = run(shell, CHECK, str(root))
    assert res.returncode == 1 and "has no usr/share/osfleet/rootfs.sha256" in res.stdout


# --- item 13 of issue 7: the release stamp never comes from the image ----------------------------------

@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
@pytest.mark.parametrize("name", [".osfleet-release.json", "./.osfleet-release.json.tmp", "x/.osfleet-release.json"])
def test_a_layer_that_carries_the_stamp_is_refused_before_it_is_written(tmp_path: Path, shell: list[str], name: str) -> None:
    stamp = json.dumps({"device_type": "gx", "version": "2.113.0", "digest": "sha256:" + "1" * 64, "source": "registry"}).encode()
    layer1 = make_layer({"usr": "dir", "usr/file": b"1\n", "x": ("symlink", ".")})
    layer2 = make_layer({"etc": "dir", "etc/os-release": b'VERSION="2.113.0"\n', name: stamp})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    root = tmp_path / "root"
    root.mkdir()
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root))
    assert res.returncode == 1
    assert f"carries {name.removeprefix('./')}: the release stamp is written by osfleet.hup after its checks" in res.stdout
    assert not [p for p in tree(root) if "osfleet-release" in p or p.startswith("etc")], "nothing of the layer was written"


# --- item 8 of issue 7: whiteouts of names that tar -t escapes ----------------------------------------

ODD_NAMES = ["é-ü.conf", "back\\slash", "tab\there", "sp ace", "日本"]


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_whiteouts_of_names_tar_escapes(tmp_path: Path, shell: list[str], locale: str) -> None:
    """GNU tar -t prints é as \\303\\251 and a backslash as \\\\ (C locale, as over SSH): the whiteout
    must still remove the file, and no .wh. marker may stay in the root."""
    root = tmp_path / "root"
    layer1 = make_layer({"etc": "dir", **{f"etc/{n}": b"old\n" for n in ODD_NAMES}, "etc/dir é": "dir", "etc/dir é/f": b"f\n"})
    layer2 = make_layer({**{f"etc/.wh.{n}": b"" for n in ODD_NAMES}, "etc/dir é/.wh..wh..opq": b"", "etc/dir é/g\\": b"g\n"})
    digest = make_layout(tmp_path / "layout", [(layer1, LAYER_GZ), (layer2, LAYER_GZ)])
    root.mkdir()
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(root), env={"LC_ALL": locale})
    assert res.returncode == 0, res.stdout + res.stderr
    assert tree(root) == {"etc": "dir", "etc/dir é": "dir", "etc/dir é/g\\": "g\n"}


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_unsupported_layer_type(tmp_path: Path, shell: list[str]) -> None:
    digest = make_layout(tmp_path / "layout", [(b"zstd data", "application/vnd.oci.image.layer.v1.tar+zstd")])
    (tmp_path / "root").mkdir()
    res = run(shell, APPLY, str(tmp_path / "layout"), digest, str(tmp_path / "root"))
    assert res.returncode == 1 and "unsupported layer media type application/vnd.oci.image.layer.v1.tar+zstd" in res.stdout


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_verify_layout(tmp_path: Path, shell: list[str]) -> None:
    layout = tmp_path / "layout"
    digest = make_layout(layout, release_layers())
    assert run(shell, VERIFY, str(layout), digest).returncode == 0
    wrong = "sha256:" + "0" * 64
    res = run(shell, VERIFY, str(layout), wrong)
    assert res.returncode == 1 and res.stdout.strip() == f"digest mismatch: the image's manifest is {digest}, the catalog says {wrong}"
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text())
    layer = layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    layer.write_bytes(layer.read_bytes() + b"x")
    res = run(shell, VERIFY, str(layout), digest)
    assert res.returncode == 1 and f"blob {layer.name} is corrupt" in res.stdout
    layer.unlink()
    res = run(shell, VERIFY, str(layout), digest)
    assert res.returncode == 1 and f"blob sha256:{layer.name} is missing" in res.stdout
    (layout / "index.json").unlink()
    assert "no index.json" in run(shell, VERIFY, str(layout), digest).stdout
    # index.json read as jq -r '[.manifests[]?.digest] | ...' prints it: a line per value, a digest that is no string as JSON
    for text, got in (("{}", "0 manifests"), ('{"manifests": [{"digest": null}]}', "null"), ('{"manifests": [{"digest": 7}]} {}', "7\n0 manifests"),
                      ("", ""), ('{"manifests": [{"digest": "a"}, {"digest": "b"}]}', "2 manifests")):
        (layout / "index.json").write_text(text)
        res = run(shell, VERIFY, str(layout), digest)
        assert res.returncode == 1 and res.stdout == f"digest mismatch: the image's manifest is {got}, the catalog says {digest}\n", text
    (layout / "index.json").write_text("{")
    assert run(shell, VERIFY, str(layout), digest).stdout == "index.json is not valid JSON\n"


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_verify_layout_names_the_first_missing_blob_of_the_manifest(tmp_path: Path, shell: list[str]) -> None:
    layout = tmp_path / "layout"
    digest = make_layout(layout, release_layers())
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text())
    (layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).unlink()
    res = run(shell, VERIFY, str(layout), digest)
    assert res.returncode == 1 and res.stdout == f"blob {manifest['config']['digest']} is missing\n"
    (layout / "blobs/sha256" / digest.split(":")[1]).unlink()
    res = run(shell, VERIFY, str(layout), digest)
    assert res.returncode == 1 and res.stdout == f"the manifest blob {digest} is missing\n"


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_cache_probe(tmp_path: Path, shell: list[str]) -> None:
    cache = tmp_path / "cache"
    good = make_layout(cache / "tmp", [(make_layer({"a": b"a"}), LAYER_GZ)])
    (cache / "tmp").rename(cache / good.split(":")[1])
    (cache / good.split(":")[1] / "osfleet-fetch.json").write_text(json.dumps({"kind": "fallback", "ref": "r@x", "bytes": 42}))
    other = make_layout(cache / "tmp2", [(make_layer({"b": b"b"}), LAYER_GZ)])
    (cache / "tmp2").rename(cache / ("f" * 64))  # named after another digest than its manifest: not usable
    (cache / (".staging-" + "e" * 64)).mkdir()
    writer = w.ExportWriter()
    probe = writer.cache_probe(str(cache))
    res = run_call(shell, probe)
    assert res.returncode == 0, res.stderr
    state = writer.cache_state(str(cache), json.loads(res.stdout))
    assert state.images == (CachedImage(good.split(":")[1], good, "fallback", "r@x", 42),)
    assert state.staging == (".staging-" + "e" * 64,)
    assert state.find(good) is not None and state.find(other) is None
    assert (state.exists, state.directory, state.mount_point, state.marked, state.entries) == (True, True, False, False, 3)
    assert sorted(state.names) == sorted([good.split(":")[1], "f" * 64, ".staging-" + "e" * 64])
    (cache / MARKER).write_text("")
    marked = writer.cache_state(str(cache), json.loads(run_call(shell, probe).stdout))
    assert marked.marked and marked.entries == 4
    empty = run_call(shell, writer.cache_probe(str(tmp_path / "absent")))
    absent = writer.cache_state("x", json.loads(empty.stdout))
    assert (absent.images, absent.exists, absent.entries) == ((), False, 0)
    (tmp_path / "file").write_text("x")
    not_dir = writer.cache_state("x", json.loads(run_call(shell, writer.cache_probe(str(tmp_path / "file"))).stdout))
    assert (not_dir.exists, not_dir.directory) == (True, False)


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_cache_probe_reads_each_layout_as_before(tmp_path: Path, shell: list[str]) -> None:
    """The layouts' names, metadata and manifests go to the probe's last jq as arguments (no jq a
    layout): each as the command substitutions read them (the metadata's trailing newlines cut, the
    index as jq -c printed it, "" when it is no JSON)."""
    cache = tmp_path / "cache"
    metas = {"a" * 64: '{"kind": "it\'s \\"odd\\"",\n "ref": "$(x)"}\n\n', "b" * 64: "not json", "c" * 64: ""}
    for name, meta in metas.items():
        (cache / name).mkdir(parents=True)
        (cache / name / "osfleet-fetch.json").write_text(meta)
    (cache / ("a" * 64) / "index.json").write_text('{"manifests": [{"digest": "sha256:1"}, {"digest": "sha256:2"}]}')
    (cache / ("b" * 64) / "index.json").write_text("{broken")
    res = run_call(shell, w.ExportWriter().cache_probe(str(cache)))
    assert res.returncode == 0, res.stderr
    images = sorted(json.loads(res.stdout)["images"], key=lambda i: i["name"])
    assert images == [{"name": "a" * 64, "meta": metas["a" * 64].rstrip("\n"), "index": '["sha256:1","sha256:2"]'},
                      {"name": "b" * 64, "meta": "not json", "index": ""}, {"name": "c" * 64, "meta": "", "index": ""}]


def test_write_script_arguments() -> None:
    image = CachedImage("ab" * 32, "sha256:" + "ab" * 32, "delta")
    plan = RootfsPlan(done=False, label="resin-rootB", dev="/dev/loop0p3", cache_dir="/mnt/data/c", mode="delta", image=image,
                      stamp={"device_type": "gx", "version": "2.113.0", "digest": "sha256:" + "1" * 64, "source": "delta"})
    script = w.ExportWriter().write_script(plan)
    assert script.script == "write_root"
    argv, stdin = scripts.load(script.script).argv(**script.params)
    assert stdin is None
    assert argv[4:] == ["resin-rootB", "/dev/loop0p3", "delta", "/mnt/data/c/" + "ab" * 32, image.digest, "gx", "2.113.0",
                        "sha256:" + "1" * 64, "delta", "", ""]
    plan.listing = RootListing("c" * 64, 791)
    argv, _stdin = scripts.load("write_root").argv(**w.ExportWriter().write_script(plan).params)
    assert argv[-2:] == ["c" * 64, "791"]


def test_write_script_refuses_a_missing_or_root_partition(tmp_path: Path) -> None:
    """The safety checks at the top of the write script run before anything is touched."""
    call = scripts.Call("write_root", {"label": "no-such-label-osfleet", "want_dev": "/dev/null", "mode": "full", "layout": str(tmp_path),
                                       "manifest": "sha256:x", "device_type": "gx", "version": "1", "digest": "d", "source": "registry",
                                       "listing_sha256": "", "listing_entries": ""})
    res = run_call(["sh"], call, env={"OSFLEET_RUN_DIR": str(tmp_path / "run")})
    assert res.returncode == 1
    assert "no-such-label-osfleet" in res.stderr


# --- the fetch script against a local registry ------------------------------------------------------

def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_registry(base: Path, http_extra: str = "") -> t.Iterator[str]:
    """A docker-registry on 127.0.0.1 storing under ``base`` (``http_extra``: more config after its
    http section, e.g. an auth section); yields its host:port, and stops it again."""
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        pytest.fail("docker-registry and skopeo are needed (make deps installs them)")
    port = free_port()
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: " + str(base / "data")
        + f"\nhttp:\n  addr: 127.0.0.1:{port}\n" + http_extra
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _attempt in range(100):
            with contextlib.closing(socket.socket()) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the local registry did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(name="registry", scope="module")
def fixture_registry(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[str]:
    with serve_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(name="pushed", scope="module")
def fixture_pushed(registry: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """A release image in the local registry: (manifest digest, size of its blobs)."""
    src = tmp_path_factory.mktemp("src")
    layout = src / "layout"
    digest = make_layout(layout, release_layers(uncompressed=False), tag="2.113.0")
    subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", "--digestfile", str(src / "digest"),
                    f"oci:{layout}:2.113.0", f"docker://{registry}/osfleet/test:2.113.0"], check=True, capture_output=True, timeout=60)
    assert (src / "digest").read_text().strip() == digest
    manifest_path = layout / "blobs/sha256" / digest.split(":")[1]
    manifest = json.loads(manifest_path.read_text())
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"]) + manifest_path.stat().st_size
    return digest, size


def fetch(cache: Path, attempts: list[FetchAttempt], shell: list[str]) -> tuple[subprocess.CompletedProcess[str], t.Any]:
    writer = w.ExportWriter()
    plan = FetchPlan(done=False, cache_dir=str(cache), attempts=attempts)
    script = writer.fetch_script(plan, insecure=True)
    res = run_call(shell, script, env={"OSFLEET_RUN_DIR": str(cache.parent / "run")})
    return res, (writer.fetch_outcome(json.loads(res.stdout)) if res.returncode == 0 else None)


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_fetch_tries_sources_in_order(tmp_path: Path, registry: str, pushed: tuple[str, int], shell: list[str]) -> None:
    digest, size = pushed
    hexd = digest.split(":")[1]
    cache = tmp_path / "cache"
    (cache / (".staging-" + "9" * 64)).mkdir(parents=True)  # left by an interrupted run
    (cache / MARKER).write_text("")
    (cache / ("8" * 64)).mkdir()  # an old layout this script made
    (cache / ("8" * 64) / "osfleet-fetch.json").write_text("{}")
    (cache / ("7" * 64)).mkdir()  # named like a layout, but not made by the fetch (no osfleet-fetch.json)
    (cache / "docker").mkdir()  # and others' files
    (cache / "notes.txt").write_text("mine")
    closed = f"127.0.0.1:{free_port()}"
    res, outcome = fetch(cache, [
        FetchAttempt("registry", f"{closed}/osfleet/test@{digest}", digest, "2.113.0"),
        FetchAttempt("fallback", f"{registry}/osfleet/test@{digest}", digest, "2.113.0"),
    ], shell)
    assert res.returncode == 0, res.stderr
    assert [a["kind"] for a in outcome.attempts] == ["registry", "fallback"]
    assert not outcome.attempts[0]["ok"] and "connect" in outcome.attempts[0]["error"]
    assert outcome.attempts[1]["ok"] and outcome.attempts[1]["error"] == ""
    assert outcome.image == CachedImage(hexd, digest, "fallback", f"{registry}/osfleet/test@{digest}", size)
    assert sorted(p.name for p in cache.iterdir()) == sorted([MARKER, hexd, "7" * 64, "docker", "notes.txt"]), \
        "staging dirs and the other layouts it made are gone, nothing else"
    meta = json.loads((cache / hexd / "osfleet-fetch.json").read_text())
    assert (meta["kind"], meta["digest"], meta["bytes"]) == ("fallback", digest, size)
    assert run(shell, VERIFY, str(cache / hexd), digest).returncode == 0


def test_fetch_into_a_new_directory_marks_it(tmp_path: Path, registry: str, pushed: tuple[str, int]) -> None:
    digest = pushed[0]
    cache = tmp_path / "new" / "cache"
    res, outcome = fetch(cache, [FetchAttempt("registry", f"{registry}/osfleet/test@{digest}", digest, "x")], ["busybox", "sh"])
    assert res.returncode == 0 and outcome.image is not None, res.stderr
    assert sorted(p.name for p in cache.iterdir()) == sorted([MARKER, digest.split(":")[1]])
    # marked: the next fetch accepts it although it is not empty
    res, outcome = fetch(cache, [FetchAttempt("registry", f"{registry}/osfleet/test@{digest}", digest, "x")], ["busybox", "sh"])
    assert res.returncode == 0 and outcome.image is not None, res.stderr


def test_fetch_all_sources_fail_leaves_nothing(tmp_path: Path, registry: str, pushed: tuple[str, int]) -> None:
    digest = pushed[0]
    wrong = "sha256:" + "0" * 64
    cache = tmp_path / "cache"
    keep = cache / ("8" * 64)
    keep.mkdir(parents=True)
    (keep / "osfleet-fetch.json").write_text("{}")
    (cache / MARKER).write_text("")
    res, outcome = fetch(cache, [
        FetchAttempt("registry", f"{registry}/osfleet/test@{wrong}", wrong, "x"),
        FetchAttempt("fallback", f"{registry}/osfleet/nothere@{digest}", digest, "x"),
    ], ["busybox", "sh"])
    assert res.returncode == 0, res.stderr
    assert outcome.image is None
    assert [a["ok"] for a in outcome.attempts] == [False, False]
    assert "manifest unknown" in outcome.attempts[0]["error"].lower()
    assert outcome.attempts[1]["error"]
    assert sorted(p.name for p in cache.iterdir()) == [MARKER, keep.name], "a failed fetch removes only its own staging dir"


def test_fetch_verifies_the_catalog_digest(tmp_path: Path, registry: str, pushed: tuple[str, int]) -> None:
    """A registry that serves another manifest under the ref than the catalog names is caught."""
    digest = pushed[0]
    other = "sha256:" + "c" * 64
    # pull by the real digest but expect another one: the verification must refuse the layout
    res, outcome = fetch(tmp_path / "cache", [FetchAttempt("registry", f"{registry}/osfleet/test@{digest}", other, "x")],
                         ["busybox", "sh"])
    assert res.returncode == 0, res.stderr
    assert outcome.image is None
    assert outcome.attempts[0]["error"] == f"digest mismatch: the image's manifest is {digest}, the catalog says {other}"
    assert list((tmp_path / "cache").iterdir()) == [], "a failed fetch leaves nothing, not even the marker"


#: attempt values a shell would trip on (the fetch script reads them all in one jq, as @sh assignments)
ODD_KIND = "reg 'istry' $(touch x) \\ \"q\" \u00e9\n\n"


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_fetch_keeps_odd_attempt_values_as_they_are(tmp_path: Path, registry: str, pushed: tuple[str, int], shell: list[str]) -> None:
    """Every attempt's values come back as they went in, and osfleet-fetch.json is the text jq -n
    printed for them before the script read its input in one jq."""
    digest, size = pushed
    hexd = digest.split(":")[1]
    cache = tmp_path / "cache"
    closed = f"127.0.0.1:{free_port()}"
    res, outcome = fetch(cache, [
        FetchAttempt(ODD_KIND, f"{closed}/osfleet/test@{digest}", digest, "2.113.0"),
        FetchAttempt("fall back", f"{registry}/osfleet/test@{digest}", digest, "2.113.0"),
        FetchAttempt("never", f"{registry}/osfleet/test@{digest}", digest, "2.113.0"),
    ], shell)
    assert res.returncode == 0, res.stderr
    # (its trailing line break cut, as the shell's command substitution cut it when a jq read each value)
    assert [(a["kind"], a["ok"], a["bytes"]) for a in outcome.attempts] == [(ODD_KIND[:-2], False, 0), ("fall back", True, size)]
    assert outcome.attempts[0]["error"] and outcome.attempts[1]["error"] == "" and outcome.image.kind == "fall back"
    assert not (tmp_path / "x").exists() and not Path("x").exists()
    text = (cache / hexd / "osfleet-fetch.json").read_text()
    at = json.loads(text)["fetched_at"]
    expected = subprocess.run(["jq", "-n", "--arg", "kind", "fall back", "--arg", "ref", f"{registry}/osfleet/test@{digest}", "--arg", "digest",
                               digest, "--argjson", "bytes", str(size), "--arg", "at", at,
                               "{kind: $kind, ref: $ref, digest: $digest, bytes: $bytes, fetched_at: $at}"],
                              capture_output=True, text=True, check=True).stdout
    assert text == expected


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_fetch_writes_an_odd_kind_into_its_metadata_as_jq_does(tmp_path: Path, registry: str, pushed: tuple[str, int], shell: list[str]) -> None:
    digest, size = pushed
    cache = tmp_path / "cache"
    res, outcome = fetch(cache, [FetchAttempt(ODD_KIND, f"{registry}/osfleet/test@{digest}", digest, "x")], shell)
    assert res.returncode == 0 and outcome.image is not None, res.stderr
    text = (cache / digest.split(":")[1] / "osfleet-fetch.json").read_text()
    meta = json.loads(text)
    assert (meta["kind"], meta["bytes"]) == (ODD_KIND[:-2], size)
    expected = subprocess.run(["jq", "-n", "--arg", "kind", ODD_KIND[:-2], "--arg", "ref", f"{registry}/osfleet/test@{digest}", "--arg", "digest",
                               digest, "--argjson", "bytes", str(size), "--arg", "at", meta["fetched_at"],
                               "{kind: $kind, ref: $ref, digest: $digest, bytes: $bytes, fetched_at: $at}"],
                              capture_output=True, text=True, check=True).stdout
    assert text == expected


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_fetch_refuses_input_without_a_list_of_attempts(tmp_path: Path, shell: list[str]) -> None:
    argv, _stdin = scripts.load("fetch").argv(cache=str(tmp_path / "cache"), insecure=True, input={})
    for stdin in ('{"attempts": "x", "auth": null}\n', "not json\n"):
        res = subprocess.run([*shell, *argv[1:]], input=stdin, capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "OSFLEET_RUN_DIR": str(tmp_path / "run")})
        assert res.returncode == 1 and res.stderr.strip().endswith("the fetch input is not JSON {attempts: [...], auth}"), res.stderr
    argv, stdin = scripts.load("fetch").argv(cache=str(tmp_path / "cache"), insecure=True, input={"attempts": [], "auth": None})
    res = subprocess.run([*shell, *argv[1:]], input=stdin, capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "OSFLEET_RUN_DIR": str(tmp_path / "run")})
    assert res.returncode == 0 and json.loads(res.stdout) == {"attempts": [], "fetched": "", "bytes": 0}, res.stderr


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock not installed")
def test_one_writer_at_a_time(tmp_path: Path) -> None:
    """While another fetch or root write holds the device's writer lock, a second one stops at once."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    holder = subprocess.Popen(["flock", str(rundir / "writer.lock"), "sleep", "30"])
    try:
        for _attempt in range(100):
            if subprocess.run(["flock", "-n", str(rundir / "writer.lock"), "true"], check=False).returncode != 0:
                break
            time.sleep(0.05)
        script = w.ExportWriter().fetch_script(FetchPlan(done=False, cache_dir=str(tmp_path / "cache")), insecure=True)
        res = run_call(["bash"], script, env={"OSFLEET_RUN_DIR": str(rundir)})
        assert res.returncode == 1
        assert "another fetch or root write is still running on the device" in res.stderr
        assert not (tmp_path / "cache").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_refusal_names_the_holders_on_one_short_line(tmp_path: Path) -> None:
    """An orphaned write holds the lock in several processes whose command lines span lines (a
    device script is ``sh -c '<text>'``): the refusal stays one line, starts with the reason, names
    the first holder's command line cut short and counts the others, so that the controller's cut of
    a long message never loses the reason (CI: the message began " or root write is still running")."""
    rundir = tmp_path / "run"
    rundir.mkdir()
    lock = rundir / "writer.lock"
    text = "set -u\nPATH=/usr/sbin:/usr/bin:$PATH\n" + "# a long device script line\n" * 20
    holders = [subprocess.Popen(["flock", str(lock), "sh", "-c", f"{text}sleep 30 & sleep 30 & sleep 30; wait"])]
    try:
        for _attempt in range(100):
            if subprocess.run(["flock", "-n", str(lock), "true"], check=False).returncode != 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        script = w.ExportWriter().fetch_script(FetchPlan(done=False, cache_dir=str(tmp_path / "cache")), insecure=True)
        res = run_call(["bash"], script, env={"OSFLEET_RUN_DIR": str(rundir)})
        assert res.returncode == 1
        (line,) = [x for x in res.stderr.splitlines() if "still running" in x]
        assert line.startswith("another fetch or root write is still running on the device"), res.stderr
        assert f"held by pid {holders[0].pid} (flock " in line, line
        assert "and 4 more (pids " in line, line
        assert len(line) < 400, line
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


@pytest.mark.skipif(not shutil.which("skopeo") or not shutil.which("timeout"), reason="skopeo and timeout are needed")
def test_a_hung_pull_is_ended_by_the_exec_timeout_and_frees_the_writer_lock(tmp_path: Path) -> None:
    """A registry that accepts and never answers: skopeo is ended after OSFLEET_EXEC_TIMEOUT (the
    step's exec_timeout), the attempt names the bound, and the writer lock is free again."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        digest = "sha256:" + "a" * 64
        script = w.ExportWriter().fetch_script(FetchPlan(done=False, cache_dir=str(tmp_path / "cache"), attempts=[
            FetchAttempt("registry", f"127.0.0.1:{silent.getsockname()[1]}/osfleet/test@{digest}", digest, "x")]), insecure=True)
        rundir = tmp_path / "run"
        res = run_call(["sh"], script, env={"OSFLEET_RUN_DIR": str(rundir), "OSFLEET_EXEC_TIMEOUT": "2"})
    finally:
        silent.close()
    assert res.returncode == 0, res.stderr
    (attempt,) = json.loads(res.stdout)["attempts"]
    assert not attempt["ok"] and attempt["error"].startswith("skopeo did not finish within 2 s (exec_timeout)"), attempt
    assert subprocess.run(["flock", "-n", str(rundir / "writer.lock"), "true"], check=False).returncode == 0


# --- the fetch script's guards of the cache dir (issue 7 item 6) -----------------------------------------

def fetch_into(cache: Path, shell: list[str] | None = None, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the fetch script with one attempt that cannot succeed (nothing listens on its port)."""
    digest = "sha256:" + "9" * 64
    plan = FetchPlan(done=False, cache_dir=str(cache),
                     attempts=[FetchAttempt("registry", f"127.0.0.1:{free_port()}/osfleet/test@{digest}", digest, "x")])
    argv, stdin = scripts.load("fetch").argv(**w.ExportWriter().fetch_script(plan, insecure=True).params)
    return subprocess.run([*(wrap or []), *(shell or ["busybox", "sh"]), *argv[1:]], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "OSFLEET_RUN_DIR": str(cache.parent / "run")})


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_fetch_refuses_an_unmarked_directory_that_is_not_empty(tmp_path: Path, shell: list[str]) -> None:
    cache = tmp_path / "data"
    (cache / "docker" / "volumes").mkdir(parents=True)
    (cache / ("8" * 64)).mkdir()
    (cache / ("8" * 64) / "osfleet-fetch.json").write_text("{}")
    before = tree(cache)
    res = fetch_into(cache, shell)
    assert res.returncode == 1
    assert res.stderr.strip() == (f"refusing cache_dir {cache}: it is not empty and has no {MARKER}, so osfleet.hup did not make it; "
                                  "give a new or empty directory")
    assert tree(cache) == before


def test_fetch_refuses_a_cache_dir_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for name in ("file", "link"):
        res = fetch_into(tmp_path / name)
        assert res.returncode == 1 and res.stderr.strip() == f"refusing cache_dir {tmp_path / name}: it exists and is not a directory"
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_fetch_accepts_an_empty_unmarked_directory(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    res = fetch_into(tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert list((tmp_path / "cache").iterdir()) == [], "a failed fetch leaves it as it was"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (a tmpfs mount)")
def test_fetch_refuses_a_mount_point(tmp_path: Path) -> None:
    """/mnt/data and its kind: a mount point is refused even when it is empty or carries the marker."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    link = tmp_path / "via-link"
    link.symlink_to(mnt)
    for cache, setup in ((mnt, ""), (mnt, f"echo > {mnt}/{MARKER} && "), (link, "")):
        wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount -t tmpfs osfleet-test {mnt} && {setup}exec \"$@\"", "x"]
        res = fetch_into(cache, wrap=wrap)
        assert res.returncode == 1, res.stdout
        assert res.stderr.strip() == f"refusing cache_dir {cache}: it is a mount point; the image cache must be a directory of its own"


# --- issue 7 item 4: the written root against the release's own listing ------------------------------

LISTING = library_call('osfleet_root_listing "$1" "$2"')
CHECK_LISTING = library_call('osfleet_check_listing "$1" "$2" "$3"')


def listing_root(root: Path) -> bytes:
    """A small root with what the canonical listing must get right, and its listing written by hand
    (docs/internals.md §3, root_listing): types, modes with setuid and sticky bits, owners, names
    with spaces, a backslash and a tab, a link target with them, an empty file; lost+found and the
    stamp at the top are not listed, an entry inside lost+found is."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/a b").write_bytes(b"app\n")
    (root / "back\\slash").write_bytes(b"b\n")
    (root / "tab\tname").write_bytes(b"")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "usr/bin/su").write_bytes(b"su\n")
    os.chown(root / "usr/bin/su", 0, 5)  # before the chmod: chown clears the setuid bit
    (root / "usr/bin/su").chmod(0o4755)
    (root / "bin").symlink_to("usr/bin")
    (root / "odd").symlink_to("/x\\y\tz w")
    (root / "lost+found/orphan").mkdir(parents=True)
    (root / ".osfleet-release.json").write_text("{}")
    lines = [
        "back\\\\slash\tf\t644\t0:0\t2\t" + sha(b"b\n"),
        "bin\tl\t777\t0:0\t7\tusr/bin",
        "lost+found/orphan\td\t755\t0:0\t-\t-",
        "odd\tl\t777\t0:0\t8\t/x\\\\y\\tz w",
        "tab\\tname\tf\t644\t0:0\t0\t" + sha(b""),
        "tmp\td\t1777\t0:0\t-\t-",
        "usr\td\t755\t0:0\t-\t-",
        "usr/bin\td\t755\t0:0\t-\t-",
        "usr/bin/a b\tf\t644\t0:0\t4\t" + sha(b"app\n"),
        "usr/bin/su\tf\t4755\t0:5\t3\t" + sha(b"su\n"),
    ]
    return "".join(line + "\n" for line in sorted(lines, key=str.encode)).encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="owners: needs root")
@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_root_listing_is_canonical(tmp_path: Path, shell: list[str]) -> None:
    root = tmp_path / "root"
    os.umask(0o022)
    want = listing_root(root)
    res = run(shell, LISTING, str(root), str(tmp_path / "listing"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "listing").read_bytes() == want


@pytest.mark.skipif(os.geteuid() != 0, reason="owners: needs root")
@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_check_listing_passes_the_release_and_names_what_differs(tmp_path: Path, shell: list[str]) -> None:
    root = tmp_path / "root"
    os.umask(0o022)
    want = listing_root(root)
    res = run(shell, CHECK_LISTING, str(root), sha(want), str(want.count(b"\n")))
    assert (res.returncode, res.stdout) == (0, f"{sha(want)} 10\n"), res.stderr
    # the release's own list names some of the files; an extra one is named, a changed mode only counted
    (root / "usr/share/osfleet").mkdir(parents=True)
    (root / "usr/share/osfleet/rootfs.sha256").write_bytes(sums({"usr/bin/a b": b"app\n"}))
    (root / "usr/bin/su").chmod(0o755)
    res = run(shell, CHECK_LISTING, str(root), sha(want), "10")
    assert res.returncode == 1, res.stdout
    assert res.stdout.startswith("its listing has 13 entries (3 more than the release, whose root_listing has 10) and sha256 "), res.stdout
    assert res.stdout.rstrip().endswith(f", the catalog says {sha(want)}; 3 regular file(s) that its rootfs.sha256 does not name: "
                                        "./back\\\\slash ./tab\\tname ./usr/bin/su"), res.stdout
    # a root without its list: the counts only
    (root / "usr/share/osfleet/rootfs.sha256").unlink()
    res = run(shell, CHECK_LISTING, str(root), sha(want), "12")
    assert res.returncode == 1 and "(as many as the release, whose root_listing has 12)" in res.stdout and "does not name" not in res.stdout


@pytest.mark.parametrize("shell", SHELLS, ids=[s[0] for s in SHELLS])
def test_root_listing_refuses_a_link_target_with_a_line_break(tmp_path: Path, shell: list[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "l").symlink_to("a\nb")
    res = run(shell, LISTING, str(root), str(tmp_path / "listing"))
    assert (res.returncode, res.stdout.strip()) == (1, "the link ./l has a line break in its target")
