# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image cache model (plugin_utils.cache)."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CacheState, cache_problem, oci_tag


@pytest.mark.parametrize(("text", "tag"), [("2.113.0", "2.113.0"), ("2.113.0+rev1", "2.113.0_rev1"), ("", "latest"), ("a/b:c", "a_b_c")])
def test_oci_tag(text: str, tag: str) -> None:
    assert oci_tag(text) == tag


C = "/mnt/data/osfleet/images"
CACHE_CASES = [
    # (name, CacheState fields, problem fragment; None: accepted)
    ("absent: fetch makes it", {}, None),
    ("empty and unmarked", {"exists": True, "directory": True}, None),
    ("marked, with layouts and other files", {"exists": True, "directory": True, "marked": True, "entries": 9, "names": ("a",)}, None),
    ("a mount point", {"exists": True, "directory": True, "mount_point": True, "marked": True},
     f"refusing cache_dir {C}: it is a mount point; the image cache must be a directory of its own"),
    ("unmarked, not empty", {"exists": True, "directory": True, "entries": 7, "names": ("docker", "EFI", "logs", "x", "y")},
     f"refusing cache_dir {C}: it is not empty (docker, EFI, logs, x, y, ...) and has no .osfleet-cache, so osfleet.hup did not make it"),
    ("unmarked, one entry", {"exists": True, "directory": True, "entries": 1, "names": ("docker",)}, "it is not empty (docker) and has no"),
    ("a file", {"exists": True}, f"refusing cache_dir {C}: it exists and is not a directory"),
]


@pytest.mark.parametrize(("fields", "problem"), [c[1:] for c in CACHE_CASES], ids=[c[0] for c in CACHE_CASES])
def test_cache_problem(fields: dict[str, t.Any], problem: str | None) -> None:
    found = cache_problem(CacheState(C, **fields))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
