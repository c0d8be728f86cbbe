# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health step's decisions (steps/health.py): where the device stands after the update's reboot,
what follows the checks, what check mode says.
"""

from __future__ import annotations

import pytest
from switch_model import Model, armed

from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import (
    ALTBOOT_BREADCRUMB, ALTBOOT_TRIGGERED, HEALTH_BREADCRUMB, HEALTH_TRIGGERED, ROLLBACK_MARKER,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import current_boot_state, plan_commit, plan_rollback
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.health import (
    COMMITTED_TEXT,
    CheckResult,
    HealthView,
    classify_health,
    committed_by,
    decide_after_checks,
    failed_checks_text,
    health_preview,
)


def booted_new(**kw) -> Model:
    model = armed(Model.fresh(**kw))
    model.reboot()
    return model


def classify(model: Model, expected: str | None = "2.113.0") -> HealthView:
    dev, probe = model.both(listed=False)
    state = current_boot_state(dev)[0]
    return classify_health(dev, probe, state, expected)


def _fell_back(model: Model) -> None:
    """The bootloader booted rootA again although the env names rootB (bootcount past the limit)."""
    model.boot["bootcount.env"] = "bootcount=4\n"


@pytest.mark.parametrize(
    "setup, expected, kind, reason, committed",
    [
        # the target runs, its rollback-health still tests
        (lambda m: (m.services.update({"rollback-health": "active"}), setattr(m, "rollback_health_state", "testing")),
         "2.113.0", "wait", None, False),
        # the target runs, rollback-health finished without committing (not installed or failed): ready, not committed
        (lambda m: None, "2.113.0", "ready", None, False),
        # the device committed by itself
        (lambda m: m.apply(plan_commit(*m.both()).ops), "2.113.0", "ready", None, True),
        # no expected version: markers only
        (lambda m: None, None, "ready", None, False),
        # rollback-health decided to roll back and reboots
        (lambda m: setattr(m, "rollback_health_state", "rolled-back"), "2.113.0", "wait", "health", False),
        # our own rollback waits for its reboot
        (lambda m: m.apply(plan_rollback(*m.both(), target_index=2, reason="checks").ops), "2.113.0", "wait", "checks", False),
    ],
)
def test_classify_on_the_new_root(setup, expected, kind, reason, committed):
    model = booted_new()
    setup(model)
    view = classify(model, expected)
    assert (view.kind, view.reason, view.committed) == (kind, reason, committed), view.msg


def test_classify_waiting_rollback_health_may_proceed_on_timeout():
    model = booted_new()
    model.rollback_health_state = "waiting"
    assert classify(model).proceed_on_timeout


def _mid_commit(model: Model, env_first: bool) -> None:
    """rollback-health is committing (rollback-stop): the breadcrumbs removed and the env still armed
    (rollback-stop's order), or the other way round."""
    armed_env = dict(model.boot)
    model.apply(plan_commit(*model.both()).ops)
    if env_first:
        model.state[HEALTH_BREADCRUMB] = ""
    else:
        model.boot.update(armed_env)
    model.services["rollback-health"] = "active"
    model.rollback_health_state = "testing"


@pytest.mark.parametrize("env_first", [False, True])
def test_classify_rollback_health_in_the_middle_of_its_commit_waits(env_first):
    """The step must not take a commit half done by rollback-health for one nobody made (it then
    committed itself and said so, "committed (rollback-stop)", instead of rollback-health's)."""
    model = booted_new()
    _mid_commit(model, env_first)
    view = classify(model)
    assert view.kind == "wait" and view.proceed_on_timeout, view


def test_classify_rollback_health_finishing_its_commit_waits():
    """rollback-health ran rollback-stop (the env and the breadcrumbs committed) and still runs: its
    commit hooks, then its state "committed", follow. The step waits for that end instead of taking
    the commit for one made earlier ("already committed when the step looked"); a test_update run
    that looked in that window said so. A state file left "testing" by a rollback-health that no
    longer runs is not waited for."""
    model = booted_new()
    model.apply(plan_commit(*model.both()).ops)
    model.services["rollback-health"] = "active"
    model.rollback_health_state = "testing"
    view = classify(model)
    assert view.kind == "wait" and view.proceed_on_timeout and not view.device_commits, view
    model.services["rollback-health"] = "inactive"
    assert classify(model) == HealthView("ready", committed=True)
    model.services["rollback-health"], model.rollback_health_state = "active", "committed"
    assert classify(model) == HealthView("ready", committed=True)


def test_classify_committed_while_rollback_health_still_waits_is_ready():
    """The update committed (by the health step, or earlier) while rollback-health is still in its
    initial wait: rollback-health has not tested yet, so the commit is not its own and nothing of it
    follows. The step is ready at once; a re-run of the update, or a second health task, waited for
    the whole of rollback-health's window (test_steps_switch's test_arm_reboot_commit: 300 s)."""
    model = booted_new()
    model.apply(plan_commit(*model.both()).ops)
    model.services["rollback-health"] = "active"
    model.rollback_health_state = "waiting"
    assert classify(model) == HealthView("ready", committed=True)


def test_classify_rollback_health_rolling_back_waits():
    """rollback-health gave the target up: the old OS's hooks armed rootA again (upgrade_available=1)
    and rollback-stop has not run yet. That is a rollback on its way, not a wrongly armed device."""
    model = booted_new()
    model.services["rollback-health"] = "active"
    model.rollback_health_state = "testing"
    model.boot["resinOS_uEnv.txt"] = "resin_root_part=2\nupgrade_available=1\n"
    view = classify(model)
    assert (view.kind, view.reason) == ("wait", "health"), view.msg
    assert "rolling back to resin-rootA" in view.msg
    # the same env without rollback-health at work is armed wrongly
    model.services["rollback-health"] = "inactive"
    model.rollback_health_state = "committed"
    view = classify(model)
    assert view.kind == "wrong" and "armed for resin-rootA" in view.msg


def old_root(marker: str | None = None, reason: str | None = None) -> Model:
    """Back on rootA (2.88.4) after a rollback; the target 2.113.0 is on rootB."""
    model = booted_new()
    model.apply(plan_rollback(*model.both(), target_index=2, reason=reason or "checks").ops)
    model.reboot()
    if reason is None:
        del model.state[ROLLBACK_MARKER]
    if marker:
        model.state[marker] = ""
    return model


@pytest.mark.parametrize(
    "model_fn, kind, reason, text",
    [
        (lambda: old_root(ALTBOOT_TRIGGERED), "rolled_back", "altboot", "the new OS did not boot"),
        (lambda: old_root(HEALTH_TRIGGERED), "rolled_back", "health", "the device's health checks failed"),
        (lambda: old_root(reason="checks"), "rolled_back", "checks", "the health commands failed"),
        (lambda: old_root(reason="requested"), "rolled_back", "requested", "a rollback was requested"),
        (old_root, "rolled_back", "unknown", "no marker says why"),
    ],
)
def test_classify_rolled_back(model_fn, kind, reason, text):
    view = classify(model_fn())
    assert (view.kind, view.reason) == (kind, reason)
    assert text in view.msg and "runs 2.88.4 from resin-rootA, not 2.113.0" in view.msg


def test_classify_altboot_pending_then_done():
    model = armed(Model.fresh())
    _fell_back(model)  # env still names rootB, armed; the device runs rootA
    view = classify(model)
    assert view.kind == "wait" and view.reason == "altboot" and not view.proceed_on_timeout
    del model.state[ALTBOOT_BREADCRUMB]  # rollback-altboot could not run: no breadcrumb
    assert classify(model).kind == "rolled_back"


def test_classify_not_booted_yet():
    view = classify(armed(Model.fresh()))
    assert view.kind == "not_booted" and "reboot it first" in view.msg


def test_classify_wrong_version_without_rollback_evidence():
    model = Model.fresh()
    model.inactive_version = "2.100.0"
    view = classify(model)
    assert view.kind == "wrong" and "runs 2.88.4 from resin-rootA, not 2.113.0" in view.msg


def test_classify_stale_triggered_marker_ignored_on_the_expected_version():
    model = booted_new()
    model.state[HEALTH_TRIGGERED] = ""
    assert classify(model).kind == "ready"
    # without an expected version the marker is all there is
    assert classify(model, None).kind == "rolled_back"


def test_classify_versions_compare_as_versions():
    model = booted_new()
    assert classify(model, "v2.113.0").kind == "ready"


@pytest.mark.parametrize(
    "rcs, committed, commit, rollback, decision",
    [
        ([0, 0], False, True, True, "commit"),
        ([0, 0], True, True, True, "none"),
        ([0], False, False, True, "none"),
        ([], False, True, True, "commit"),
        ([0, 1], False, True, True, "rollback"),
        ([None], True, True, True, "rollback"),
        ([1], False, True, False, "fail"),
    ],
)
def test_decide_after_checks(rcs, committed, commit, rollback, decision):
    checks = [CheckResult(f"c{i}", rc) for i, rc in enumerate(rcs)]
    assert decide_after_checks(checks, committed=committed, commit=commit, rollback=rollback) == decision


def test_failed_checks_text():
    checks = [CheckResult("true", 0), CheckResult("false", 1, "", "boom\n"), CheckResult("x", None, "", "")]
    assert failed_checks_text(checks) == "'false' exited 1: boom; 'x' exited without a result"
    assert CheckResult("true", 0).as_dict()["ok"] is True


@pytest.mark.parametrize(
    "view, commands, commit, rollback, changed, words",
    [
        (HealthView("ready", committed=True), 2, True, True, False, ["ran 2 health check"]),
        (HealthView("ready", committed=False), 0, True, True, True, ["committed the update"]),
        (HealthView("ready", committed=False), 1, False, False, False, ["ran 1 health check"]),
        # rollback-health runs and commits by itself while the real step waits: no change of the step's own
        (HealthView("wait", "rollback-health is testing", proceed_on_timeout=True), 1, True, True, False,
         ["waited for the device's rollback-health to check and commit", "when rollback-health had not within the device_timeout (900 s)", "rolled back"]),
        (HealthView("wait", "a rollback to resin-rootA waits for its reboot", "health"), 0, True, True, False, ["waited for the device to settle"]),
        # the dry run of a whole update: the arm writes the rollback-health breadcrumb, the device commits after the reboot
        (HealthView("not_booted", "reboot it first"), 1, True, True, False,
         ["after the update's reboot, verified that the device runs 2.113.0", "waited for the device's rollback-health"]),
        (HealthView("wrong", "the device runs 2.88.4 from resin-rootA, not 2.113.0"), 2, True, True, False, ["(now: the device runs 2.88.4", "ran 2 health"]),
        (HealthView("rolled_back", "rolled back", "altboot"), 0, True, True, False, ["(now: rolled back)"]),
        (HealthView("wrong", "the device runs 2.88.4"), 0, False, True, False, ["verified"]),
    ],
)
def test_health_preview(view, commands, commit, rollback, changed, words):
    """Check mode predicts what the real step then reports (issue 8: a dry run that tells the truth)."""
    got_changed, actions = health_preview(view, "2.113.0", commands=commands, commit=commit, rollback=rollback, device_timeout=900)
    assert got_changed is changed
    for word in words:
        assert any(word in a for a in actions), actions


@pytest.mark.parametrize(
    "view, waited, state, by",
    [
        # the step saw rollback-health run (breadcrumb, env armed), then found the update committed
        (HealthView("ready", committed=True), True, "", "rollback-health"),
        # committed before the step first looked; rollback-health's state of this boot says it did it
        (HealthView("ready", committed=True), False, "committed", "rollback-health"),
        # committed, and nothing of this boot says by whom (a second run of the step)
        (HealthView("ready", committed=True), False, "", "earlier"),
        (HealthView("ready", committed=True), False, "rolled-back", "earlier"),
        # not committed: the step commits (or not, commit=false); nobody to name
        (HealthView("ready", committed=False), True, "committed", None),
    ],
)
def test_committed_by(view, waited, state, by):
    """A step whose work the device's own services already did says so (issue 8)."""
    assert committed_by(view, waited_for_rollback_health=waited, rollback_health_state=state) == by
    if by == "rollback-health":
        assert COMMITTED_TEXT[by] == "committed by the device's rollback-health"
