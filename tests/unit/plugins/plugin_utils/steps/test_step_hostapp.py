# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostapp writer's decisions (steps/hostapp.py): which writer, which hostapp-update attempts,
attach to a running one, when the inactive hostapp is the target, and what a finished job means."""

from __future__ import annotations

import copy
import typing as t

import pytest
from prepare_model import CATALOG, D113, DELTA113, GX, dg, make_state, stamp

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import parse_hostapp
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, inactive_is_target, resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.hostapp import (
    JOB_HOOKS_FAILED, JOB_RETRY, JOB_WRITTEN, JOB_WRONG, HostappJob, choose_writer, decide_hostapp_write, judge_job,
)

I88, I113, IOTHER = dg("c"), dg("d"), dg("e")
C_A, C_B = "0" * 63 + "a", "0" * 63 + "b"
ACTIVE = f"hostapps/{C_A} {I88}"


def hostapp_catalog(image_id: str | None = I113) -> Catalog:
    data = copy.deepcopy(CATALOG)
    for rel in data["releases"]:
        if rel["device_type"] == GX and rel["version"] == "2.113.0" and image_id:
            rel["image_id"] = image_id
        if rel["device_type"] == GX and rel["version"] == "2.88.4":
            rel["image_id"] = I88
    return Catalog(data, "test-catalog.json")


def device(**kw: t.Any):
    kw.setdefault("active_hostapp", ACTIVE)
    kw.setdefault("hostapp_update", True)
    return make_state(**kw)


def target(catalog: Catalog, state, version: str = "2.113.0"):
    return resolve_target(ReleaseArgs.from_args({"catalog": "c", "target_version": version}), catalog, state)


def plan(catalog: Catalog, state, sources=("delta", "registry", "fallback"), job=None):
    return decide_hostapp_write(target(catalog, state), catalog, state, sources, HostappJob.from_output(job) if job else None)


@pytest.mark.parametrize(("text", "container", "image"), [
    ("", None, None),
    (f"hostapps/{C_A} {I88}", C_A, I88),
    (f"hostapps/{C_A} -", C_A, ""),
    (f"../elsewhere/{C_A} {I88}", "", ""),
    (f"hostapps/short {I88}", "", ""),
    (f"hostapps/{C_A} sha256:nothex", C_A, ""),
])
def test_parse_hostapp(text: str, container: str | None, image: str | None) -> None:
    held = parse_hostapp(text)
    if container is None:
        assert held is None
        return
    assert held is not None and held.container == container and held.image_id == image


def test_writer_is_chosen_from_the_probe() -> None:
    assert choose_writer(make_state()) == "export"
    assert choose_writer(device()) == "hostapp"
    assert choose_writer(device(), "export") == "export"
    with pytest.raises(PlanError, match="no hostapp-update"):
        choose_writer(device(hostapp_update=False))
    with pytest.raises(PlanError, match="forced to hostapp"):
        choose_writer(make_state(), "hostapp")
    with pytest.raises(PlanError, match="writer must be one of"):
        choose_writer(make_state(), "dd")


def test_attempts_delta_first_in_the_users_order() -> None:
    cat = hostapp_catalog()
    p = plan(cat, device())
    assert [a.kind for a in p.attempts] == ["delta", "registry", "fallback"]
    assert p.attempts[0].ref == f"127.0.0.1:5000/osfleet/gx-delta@{DELTA113}"
    assert p.attempts[1].ref == f"127.0.0.1:5000/osfleet/gx@{D113}"
    assert p.stamp == {"device_type": GX, "version": "2.113.0", "digest": D113, "source": "delta", "image_id": I113, "writer": "hostapp"}
    assert [a.kind for a in plan(cat, device(), sources=("registry", "delta")).attempts] == ["registry", "delta"]
    # no delta from a release the device does not verifiably run
    assert [a.kind for a in plan(cat, device(active_stamp=None)).attempts] == ["registry", "fallback"]
    with pytest.raises(PlanError, match="none of the sources delta is available"):
        plan(cat, device(active_stamp=None), sources=("delta",))


def test_a_running_job_is_attached_to_and_another_one_refused() -> None:
    cat = hostapp_catalog()
    ref = f"127.0.0.1:5000/osfleet/gx@{D113}"
    p = plan(cat, device(), job={"state": "running", "image": ref})
    assert p.attempts[0].ref == ref and [a.kind for a in p.attempts] == ["registry", "delta", "fallback"]
    assert any("attached" in a for a in p.actions)
    with pytest.raises(PlanError, match="still runs on the device"):
        plan(cat, device(), job={"state": "running", "image": "elsewhere/x@" + IOTHER})
    # a job that ended is no reason to attach
    assert plan(cat, device(), job={"state": "done", "status": 0, "image": "x"}).attempts[0].kind == "delta"


@pytest.mark.parametrize(("inactive_hostapp", "stamped", "done"), [
    (f"hostapps/{C_B} {I113}", True, True),
    (f"hostapps/{C_B} {I113}", False, False),       # written, never verified and stamped
    (f"hostapps/{C_B} {IOTHER}", True, False),      # a stale stamp over another hostapp
    (f"hostapps/{C_B} -", True, False),             # half-written: no container config
    (None, True, False),                            # wiped by an interrupted hostapp-update
])
def test_the_inactive_hostapp_is_the_target_only_by_stamp_and_image_id(inactive_hostapp, stamped: bool, done: bool) -> None:
    cat = hostapp_catalog()
    st = device(inactive_hostapp=inactive_hostapp, inactive_stamp=stamp("2.113.0", D113) if stamped else None)
    assert inactive_is_target(target(cat, st), st) is done
    if not done:
        assert not plan(cat, st).done
        # armed for a partition that does not hold the target: refused (the role disarms first)
        with pytest.raises(PlanError, match="names it as the root to boot"):
            plan(cat, device(inactive_hostapp=inactive_hostapp, inactive_stamp=stamp("2.113.0", D113) if stamped else None, root_part=3, upgrade=1))
        return
    armed = device(inactive_hostapp=inactive_hostapp, inactive_stamp=stamp("2.113.0", D113), root_part=3, upgrade=1)
    assert plan(cat, armed).done


def test_a_staged_hostapp_whose_hooks_were_undone_is_written_again() -> None:
    """A rescue (or the watchdog) ran the running OS's hooks after the write: the boot files and env
    are the old OS's again, and only hostapp-update runs the new OS's hooks."""
    cat = hostapp_catalog()
    st = device(inactive_hostapp=f"hostapps/{C_B} {I113}", inactive_stamp=stamp("2.113.0", D113))
    assert inactive_is_target(target(cat, st), st)
    p = plan(cat, st)
    assert not p.done and p.attempts[0].kind == "delta"
    assert "were undone" in p.actions[0]


def test_refusals() -> None:
    with pytest.raises(PlanError, match="no image_id for genericx86-64-ext 2.113.0"):
        plan(hostapp_catalog(image_id=None), device())
    cat = hostapp_catalog()
    with pytest.raises(PlanError, match="not committed"):
        plan(cat, device(upgrade=1))
    with pytest.raises(PlanError, match="names it as the root to boot"):
        plan(cat, device(root_part=3))
    with pytest.raises(PlanError, match="resolves to the running root"):
        plan(cat, device(same_dev=True))
    with pytest.raises(PlanError, match="too small"):
        plan(copy_with_unpacked(cat), device())


def copy_with_unpacked(cat: Catalog) -> Catalog:
    data = copy.deepcopy(cat.data)
    for rel in data["releases"]:
        if rel["version"] == "2.113.0":
            rel["size_unpacked"] = 10 * 1024 ** 3
    return Catalog(data, "test-catalog.json")


@pytest.mark.parametrize(("job", "inactive", "verdict"), [
    ({"state": "done", "status": 0}, f"hostapps/{C_B} {I113}", JOB_WRITTEN),
    ({"state": "done", "status": 0}, f"hostapps/{C_B} {IOTHER}", JOB_WRONG),
    ({"state": "done", "status": 1}, f"hostapps/{C_B} {I113}", JOB_HOOKS_FAILED),
    ({"state": "done", "status": 1}, None, JOB_RETRY),          # the pull failed: the partition was wiped
    ({"state": "gone"}, f"hostapps/{C_B} -", JOB_RETRY),         # killed before the container was complete
])
def test_judge_job(job: dict[str, t.Any], inactive: str | None, verdict: str) -> None:
    assert judge_job(HostappJob.from_output(job), device(inactive_hostapp=inactive), I113) == verdict


def test_a_job_that_ended_well_after_its_run_was_gone_is_taken_over() -> None:
    """The controller was killed (or the link lost) while hostapp-update ran; it ended well: the next
    run verifies and stamps the partition instead of writing it again."""
    cat = hostapp_catalog()
    ref = f"127.0.0.1:5000/osfleet/gx-delta@{DELTA113}"
    written = {"inactive_hostapp": f"hostapps/{C_B} {I113}", "root_part": 3, "upgrade": 1}
    p = plan(cat, device(**written), job={"state": "done", "status": 0, "image": ref})
    assert p.adopt and not p.done and [a.ref for a in p.attempts] == [ref]
    assert p.stamp["source"] == "delta" and p.stamp["image_id"] == I113
    # it failed, or left another image, or its hooks' work was undone, or it pulled something else: no take-over
    for job, more in (({"state": "done", "status": 1, "image": ref}, {}),
                      ({"state": "done", "status": 0, "image": ref}, {"inactive_hostapp": f"hostapps/{C_B} {IOTHER}"}),
                      ({"state": "done", "status": 0, "image": ref}, {"root_part": 2, "upgrade": 0}),
                      ({"state": "done", "status": 0, "image": "elsewhere/x@" + IOTHER}, {})):
        state = device(**{**written, **more})
        try:
            assert not plan(cat, state, job=job).adopt
        except PlanError as exc:
            assert "names it as the root to boot" in str(exc)
