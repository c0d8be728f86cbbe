# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Saved images of the push transport: the controller's check and cache (plugin_utils/archive.py)
and the device's check (scripts/hostapp_image_check.sh, osfleet_archive_check), run here under sh
and busybox sh on the same archives: both refuse what does not hash to the image id and diff_ids."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import typing as t
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.archive import (
    ArchiveError, ControllerCache, archive_name, archive_problem, default_cache_dir, file_sha256,
)

SHELLS = ["sh"] + (["busybox sh"] if shutil.which("busybox") else [])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_archive(path: Path, layers: list[bytes] | None = None, diff_ids: list[str] | None = None,
                 manifest: t.Any = None, corrupt_layer: int | None = None) -> str:
    """A docker-archive as skopeo writes it; returns its image id (the config's sha256)."""
    layers = layers if layers is not None else [layer({"etc/os-release": b"VERSION=2.113.0\n"}), layer({"boot/init": b"#!/bin/sh\n" * 50})]
    config = json.dumps({"architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha(x) for x in layers]}}).encode()
    image_id = sha(config)
    names = [f"{sha(x)[7:]}.tar" for x in layers]
    members = {f"{image_id[7:]}.json": config}
    for index, (name, data) in enumerate(zip(names, layers)):
        members[name] = (data[:600] + bytes([data[600] ^ 1]) + data[601:]) if index == corrupt_layer else data
    members["manifest.json"] = json.dumps(manifest if manifest is not None else
                                          [{"Config": f"{image_id[7:]}.json", "RepoTags": ["r/x:1"], "Layers": names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return image_id


def test_a_good_archive_passes(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    image_id = make_archive(path)
    assert archive_problem(str(path), image_id) is None


@pytest.mark.parametrize(("kind", "why"), [
    ("wrong_id", "its config is image"),
    ("corrupt", "not the config's diff_id"),
    ("count", "names 1 layers, its manifest.json 2"),
    ("two_images", "exactly one image"),
    ("bad_name", "names the member"),
    ("not_tar", "not a readable tar archive"),
])
def test_the_controller_refuses(tmp_path: Path, kind: str, why: str) -> None:
    path = tmp_path / "a.tar"
    image_id = make_archive(path, **archive_args(kind, path))
    if kind == "wrong_id":
        image_id = "sha256:" + "ab" * 32
    if kind == "not_tar":
        path.write_bytes(b"x" * 1000)
    problem = archive_problem(str(path), image_id)
    assert problem is not None and why in problem, problem


def archive_args(kind: str, path: Path) -> dict[str, t.Any]:
    if kind == "corrupt":
        return {"corrupt_layer": 1}
    if kind == "count":
        return {"diff_ids": [sha(b"only one")]}
    if kind == "two_images":
        return {"manifest": [{"Config": "a.json", "Layers": []}, {"Config": "b.json", "Layers": []}]}
    if kind == "bad_name":
        return {"manifest": [{"Config": "-x.json", "Layers": []}]}
    return {}


def test_the_controller_cache_keeps_only_verified_archives(tmp_path: Path) -> None:
    src = tmp_path / "src.tar"
    image_id = make_archive(src)
    cache = ControllerCache(str(tmp_path / "cache"))
    with cache.locked(image_id):
        assert cache.verified(image_id) == (None, None)
        saved = cache.add(image_id, lambda tmp: shutil.copyfile(src, tmp), "registry", "reg/x@sha256:1", "sha256:1")
    assert saved.path == str(tmp_path / "cache" / archive_name(image_id)) and saved.sha256 == file_sha256(str(src))
    assert cache.verified(image_id)[0] == saved
    # a copy that is not the image is never kept
    with pytest.raises(ArchiveError, match="is not the catalog's image"):
        cache.add("sha256:" + "cd" * 32, lambda tmp: shutil.copyfile(src, tmp), "registry", "r", "d")
    assert sorted(os.listdir(cache.directory)) == sorted([archive_name(image_id), archive_name(image_id) + ".json", f".{image_id[7:]}.lock"])
    # a cached archive changed since is dropped
    with open(saved.path, "r+b") as handle:
        handle.seek(700)
        handle.write(b"Z")
    found, problem = cache.verified(image_id)
    assert found is None and problem is not None and not os.path.exists(saved.path)


def test_default_cache_dir() -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/osfleet-hup/images"
    assert default_cache_dir({}).endswith("/.cache/osfleet-hup/images")


def device_check(sh: str, directory: Path, source: str, name: str, image_id: str, sha256: str = "", remove: bool = True) -> dict[str, t.Any]:
    script = shell.load("hostapp_image_check")
    argv = ["sh", "-c", script.text, "osfleet", str(directory), source, name, image_id, sha256, '{"kind": "registry"}', "1" if remove else "0"]
    proc = subprocess.run(sh.split() + argv[1:], capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return t.cast(dict[str, t.Any], json.loads(proc.stdout))


@pytest.mark.parametrize("sh", SHELLS)
def test_the_device_check_moves_a_good_copy_into_place_and_removes_the_others(tmp_path: Path, sh: str) -> None:
    image_id = make_archive(tmp_path / "a.part")
    name = archive_name(image_id)
    (tmp_path / "old.tar").write_bytes(b"x")
    (tmp_path / "keep.txt").write_bytes(b"x")
    out = device_check(sh, tmp_path, "a.part", name, image_id, file_sha256(str(tmp_path / "a.part")))
    assert out == {"ok": True, "why": "", "removed": False}
    assert sorted(os.listdir(tmp_path)) == sorted([name, name + ".json", "keep.txt"])
    assert json.loads((tmp_path / f"{name}.json").read_text()) == {"kind": "registry"}
    # and checks the finished image again (content only)
    assert device_check(sh, tmp_path, name, name, image_id)["ok"]


@pytest.mark.parametrize("sh", SHELLS)
@pytest.mark.parametrize(("kind", "why"), [("corrupt", "not the config's diff_id"), ("wrong_id", "its config is image"),
                                           ("count", "different numbers of layers"), ("bad_name", "names the member -x.json"),
                                           ("sha", "not the controller's")])
def test_the_device_refuses_and_removes(tmp_path: Path, sh: str, kind: str, why: str) -> None:
    path = tmp_path / "x.tar"
    image_id = make_archive(path, **archive_args(kind, path))
    sha256 = "sha256:" + "00" * 32 if kind == "sha" else ""
    if kind == "wrong_id":
        image_id = "sha256:" + "ab" * 32
    kept = device_check(sh, tmp_path, "x.tar", "x.tar", image_id, sha256, remove=False)
    assert not kept["ok"] and why in kept["why"] and not kept["removed"] and path.exists(), kept
    out = device_check(sh, tmp_path, "x.tar", "x.tar", image_id, sha256)
    assert not out["ok"] and why in out["why"] and out["removed"] and not path.exists(), out
