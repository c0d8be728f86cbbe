# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The supervisor step's decision (steps/supervisor.py)."""

from __future__ import annotations

import typing as t

import pytest
from prepare_model import (
    D88,
    D113,
    make_state,
    stamp,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.supervisor import SupervisorArgs, decide_supervisor, supervisor_lag


REGS = ("127.0.0.1:5000", "127.0.0.1:5001")
#: the supervisor images the catalog vouches for, by version (docs/internals.md §3 supervisors)
SUP_DIGESTS = {"14.11.2": "sha256:" + "e" * 64, "15.0.0": "sha256:" + "f" * 64, "14.12.0": "sha256:" + "c" * 64}
SUP_CATALOG = Catalog({"releases": [], "supervisor_repository": "osfleet/balena-supervisor", "supervisors": [
    {"version": f"v{v}", "digest": d} for v, d in SUP_DIGESTS.items()] + [
    {"version": "16.0.0", "repository": "other/supervisor", "digest": "sha256:" + "d" * 64}]})
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
    ("no digest in the catalog: never by tag", {}, {"state": "updated", "version": "14.13.0"}, "none", "14.13.0", [],
     "the catalog names no digest for supervisor v14.13.0 in osfleet/balena-supervisor (its supervisors list); "
     "the supervisor is pulled by digest only"),
    ("a digest of another repository does not count", {}, {"state": "updated", "version": "16.0.0"}, "none", "16.0.0", [],
     "the catalog names no digest for supervisor v16.0.0 in osfleet/balena-supervisor"),
]


@pytest.mark.parametrize(("state_kw", "sup_kw", "op", "target", "images", "error"),
                         [c[1:] for c in SUPERVISOR_CASES], ids=[c[0] for c in SUPERVISOR_CASES])
def test_supervisor(state_kw: dict[str, t.Any], sup_kw: dict[str, t.Any], op: str, target: str | None, images: list[str],
                    error: str | None) -> None:
    kw = {"repository": "osfleet/balena-supervisor", "registries": REGS, "catalog": SUP_CATALOG}
    images = [f"{image}@{SUP_DIGESTS[image.rsplit(':v', 1)[1]]}" for image in images]  # pulled by digest
    kw.update(sup_kw)
    if error:
        assert (op, images) == ("none", [])
        with pytest.raises(PlanError) as exc:
            decide_supervisor(SupervisorArgs(**kw), make_state(**state_kw))
        assert error in str(exc.value)
        assert exc.value.data["supervisor"]["target"] == target and exc.value.data["supervisor"]["image"] is None
        return
    plan = decide_supervisor(SupervisorArgs(**kw), make_state(**state_kw))
    assert (plan.op, plan.target, plan.images) == (op, target, images)
    assert bool(plan.actions) == (op != "none")


#: a device that booted the release before its supervisor was updated (issue 9: a balenaOS device that
#: lost power after hostapp-update's hooks armed the new OS, before the supervisor step): 2.113.0
#: runs from resin-rootB, the inactive resin-rootA holds 2.88.4 and its supervisor
BOOTED_TARGET = {"version": "2.113.0", "active": "resin-rootB", "inactive_stamp": stamp("2.88.4", D88), "inactive_sup": "14.0.8"}


@pytest.mark.parametrize(("state_kw", "op", "lag"), [
    (BOOTED_TARGET, "update", "the supervisor runs 14.0.8, the release ships 14.11.2"),
    ({**BOOTED_TARGET, "running_sup": "14.11.2"}, "none", None),
    ({**BOOTED_TARGET, "running_sup": "15.0.0"}, "none", None),  # never downgraded
    ({**BOOTED_TARGET, "running_sup": "14.9.0"}, "update", "the supervisor runs 14.9.0, the release ships 14.11.2"),
    # before the reboot: the inactive root holds the release, its supervisor.conf counts
    ({"inactive_stamp": stamp("2.113.0", D113), "inactive_sup": "14.12.0", "running_sup": "14.11.2"}, "update",
     "the supervisor runs 14.11.2, the release ships 14.12.0"),
])
def test_supervisor_lag_is_the_updated_steps_rule(state_kw: dict[str, t.Any], op: str, lag: str | None) -> None:
    """The preflight's supervisor_lag (phase supervisor_behind) says why state=updated updates, and only then."""
    state = make_state(**state_kw)
    args = SupervisorArgs(state="updated", repository="osfleet/balena-supervisor", registries=REGS, catalog=SUP_CATALOG,
                          release_version="14.11.2", release_digest=D113)
    plan = decide_supervisor(args, state)
    assert plan.op == op
    assert supervisor_lag(state, "14.11.2", D113) == lag
    if op == "update":
        assert lag is not None and plan.target == lag.rsplit(" ", 1)[1]


@pytest.mark.parametrize("release_version", [None, "", "latest"])
def test_a_release_without_a_supervisor_version_lags_nothing(release_version: str | None) -> None:
    assert supervisor_lag(make_state(**BOOTED_TARGET), release_version, D113) is None
