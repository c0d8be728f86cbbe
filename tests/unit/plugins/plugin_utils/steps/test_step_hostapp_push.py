# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The push transport's decisions (steps/hostapp.py): full images only, the device directory, the
space check and resume point of a send, check mode's bytes, and the hostapp-update -f attempt."""

from __future__ import annotations

import pytest
from prepare_model import D113
from test_step_hostapp import I113, device, hostapp_catalog, target

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.hostapp import (
    CHUNK_BYTES, SPACE_MARGIN, DeviceImages, HostappAttempt, HostappJob, PushSend, decide_hostapp_write, decide_push_send, describe_attempts,
    image_dir_problem, push_estimate, push_sources,
)

MIB = 1024 * 1024
FILE = "/mnt/data/osfleet/hostapp-images/" + I113.split(":")[1] + ".tar"


def test_push_sends_the_full_image_only_in_the_users_order() -> None:
    cat = hostapp_catalog()
    tgt = target(cat, device())
    assert [s.kind for s in push_sources(tgt, ("delta", "registry", "fallback"))] == ["registry", "fallback"]
    assert [s.kind for s in push_sources(tgt, ("fallback", "registry"))] == ["fallback", "registry"]
    assert push_sources(tgt, ("registry",))[0].ref == f"127.0.0.1:5000/osfleet/gx@{D113}"
    with pytest.raises(PlanError, match="a delta does not apply"):
        push_sources(tgt, ("delta",))


@pytest.mark.parametrize(("path", "why"), [
    ("/mnt/data/osfleet/hostapp-images", None),
    ("/mnt/data/x", None),
    ("/mnt/data", "under /mnt/data/"),
    ("/mnt/data/resin-data/tmp", "hostapp-update -f deletes"),
    ("/mnt/data/resin-data", "hostapp-update -f deletes"),
    ("/mnt/data/docker/x", "the engine owns"),
    ("/mnt/data/a/../b", "normalised"),
    ("mnt/data/x", "absolute"),
    ("/tmp/images", "under /mnt/data/"),
])
def test_image_dir(path: str, why: str | None) -> None:
    problem = image_dir_problem(path)
    assert (problem is None) if why is None else (problem is not None and why in problem), problem


def test_a_send_resumes_a_partial_copy_of_the_same_archive_and_checks_the_space() -> None:
    size = 40 * MIB + 5
    room = DeviceImages(free_kib=(2 * size + SPACE_MARGIN) // 1024 + 1)
    fresh = decide_push_send("/mnt/data/i", size, room)
    assert (fresh.offset, fresh.remaining) == (0, size)
    assert fresh.chunks() == [(0, CHUNK_BYTES), (CHUNK_BYTES, CHUNK_BYTES), (2 * CHUNK_BYTES, size - 2 * CHUNK_BYTES)]
    resumed = decide_push_send("/mnt/data/i", size, DeviceImages(part_size=20 * MIB, free_kib=room.free_kib))
    assert resumed.offset == 20 * MIB and resumed.chunks()[0] == (20 * MIB, CHUNK_BYTES)
    # a part larger than the archive is not a prefix of it: start again (its space comes back)
    assert decide_push_send("/mnt/data/i", size, DeviceImages(part_size=size + 1, free_kib=room.free_kib)).offset == 0
    assert PushSend(size, size).chunks() == []
    # what is left to send, as much again for hostapp-update -f's load, and the margin
    with pytest.raises(PlanError, match="needs 96 MiB") as exc:
        decide_push_send("/mnt/data/i", size, DeviceImages(free_kib=50 * 1024))
    assert "hostapp-update -f's load" in str(exc.value)
    # resuming needs less room
    decide_push_send("/mnt/data/i", size, DeviceImages(part_size=size - MIB, free_kib=(size + MIB + SPACE_MARGIN) // 1024 + 1))
    with pytest.raises(PlanError, match="mount point"):
        decide_push_send("/mnt/data/i", size, DeviceImages(mount_point=True, free_kib=room.free_kib))


def test_check_mode_bytes_are_the_archive_s_else_the_catalog_s() -> None:
    assert push_estimate(600, 250, 610) == 610
    assert push_estimate(600, 250, None) == 600
    assert push_estimate(None, 250, None) == 250
    assert push_estimate(None, None, None) == 0


def test_device_images_from_the_probe() -> None:
    images = DeviceImages.from_output({"exists": True, "size": 5, "part_size": None, "meta": {"kind": "fallback"}, "free_kib": 7,
                                       "others": ["x.tar"], "mount_point": False})
    assert images == DeviceImages(exists=True, size=5, meta={"kind": "fallback"}, free_kib=7, others=("x.tar",))
    assert DeviceImages.from_output({"size": True, "meta": "x"}) == DeviceImages()


def push_attempt() -> HostappAttempt:
    return HostappAttempt("registry", f"127.0.0.1:5000/osfleet/gx@{D113}", D113, 610, file=FILE)


def push_plan(state, job=None, saved=True):
    cat = hostapp_catalog()
    return decide_hostapp_write(target(cat, state), cat, state, ("delta", "registry"), HostappJob.from_output(job) if job else None,
                                push=push_attempt(), saved=saved)


def test_push_writes_with_hostapp_update_f_of_the_saved_image() -> None:
    p = push_plan(device())
    assert p.attempts == [push_attempt()] and p.attempts[0].flag == "-f" and p.attempts[0].job_image == FILE
    assert p.attempts[0].as_dict()["file"] == FILE
    assert any(f"hostapp-update -f {FILE} loads 2.113.0" in a for a in p.actions), p.actions
    assert p.stamp["source"] == "registry" and p.image_id == I113
    assert HostappAttempt("delta", "r", D113).flag == "-i" and "file" not in HostappAttempt("delta", "r", D113).as_dict()


def test_push_without_the_saved_image_asks_for_the_fetch() -> None:
    with pytest.raises(PlanError, match="osfleet.hup.fetch sends it first"):
        push_plan(device(), saved=False)


def test_push_attaches_to_its_own_running_load_only() -> None:
    p = push_plan(device(), job={"state": "running", "image": FILE, "flag": "-f"})
    assert p.attempts[0].file == FILE and any("attached" in a for a in p.actions)
    with pytest.raises(PlanError, match="still runs on the device"):
        push_plan(device(), job={"state": "running", "image": f"127.0.0.1:5000/osfleet/gx@{D113}"})


def test_describe_a_push_attempt() -> None:
    text = describe_attempts("2.113.0", [push_attempt()])
    assert text.startswith(f"hostapp-update -f {FILE} loads 2.113.0") and "610 bytes" in text
