# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal for a pair the advanced update (takeover) updates: which drills run,
decided from the catalog before a drill touches its device, and the connection failures a drill
does not wait out (its settle timeout)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepare_model import GX, JX, make_catalog

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_runner as runner

ADVANCED = ("update", "advanced_staged")


@pytest.mark.parametrize("name", rh.STANDARD_ONLY)
def test_a_takeover_pair_runs_no_drill_of_the_standard_update_saying_why(name: str) -> None:
    choice = rh.pair_method(make_catalog(), JX, "5.1.0", "6.1.0")
    assert choice is not None and choice.method == "takeover" and choice.rule == "partition-layout", choice
    why = rh.not_applicable(name, choice)
    assert why is not None and f"the drill {name} breaks the standard update" in why, why
    assert "the partition layout changes from l4t-r32 to l4t-r35" in why and "advanced_staged" in why, why


@pytest.mark.parametrize("name", ADVANCED)
def test_a_takeover_pair_runs_the_update_and_the_advanced_drill(name: str) -> None:
    assert rh.not_applicable(name, rh.pair_method(make_catalog(), JX, "5.1.0", "6.1.0")) is None


def test_a_standard_pair_runs_every_drill_but_the_advanced_one() -> None:
    choice = rh.pair_method(make_catalog(), GX, "2.88.4", "2.113.0")
    assert choice is not None and choice.method == "balenahup", choice
    assert [d for d in rh.DRILLS if rh.not_applicable(d, choice) is None] == [d for d in rh.DRILLS if d != "advanced_staged"]
    assert "not the advanced update" in (rh.not_applicable("advanced_staged", choice) or "")


def test_the_takeover_version_makes_a_takeover_pair_on_one_layout() -> None:
    cat = make_catalog()
    for release in cat.data["releases"]:
        if release["device_type"] == JX:
            release["layout"] = "l4t-r32"
    choice = rh.pair_method(make_catalog(releases=cat.data["releases"]), JX, "5.1.0", "6.1.0")
    assert choice is not None and choice.rule == "takeover-version", choice
    assert rh.not_applicable("power_write", choice) is not None


@pytest.mark.parametrize("device_type, first, target", [(JX, "5.0.0", "6.1.0"), (JX, "5.1.0", "9.9.9"), ("raspberrypi4-64", "1.0.0", "2.0.0")])
def test_a_pair_the_catalog_cannot_tell_runs_its_drills(device_type: str, first: str, target: str) -> None:
    """The drills' update runs then say what is wrong (the catalog lacks a release)."""
    choice = rh.pair_method(make_catalog(), device_type, first, target)
    assert choice is None
    assert all(rh.not_applicable(d, choice) is None for d in rh.DRILLS)


def test_a_refused_pair_runs_its_drills() -> None:
    """A downgrade is refused: the drills' update runs fail and say so, never 'not run'."""
    choice = rh.pair_method(make_catalog(), JX, "6.1.0", "5.1.0")
    assert choice is not None and choice.method is None and choice.refused
    assert all(rh.not_applicable(d, choice) is None for d in rh.DRILLS)


@pytest.mark.parametrize("text, lasting", [
    ("Failed to connect to the host via ssh: @@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@ ... "
     "Host key for [127.0.0.1]:22301 has changed and you have requested strict checking.\r\nHost key verification failed.", True),
    ("Failed to connect to the host via ssh: Host key verification failed.", True),
    ("Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 port 22301: Connection refused", False),
    ("Failed to connect to the host via ssh: Connection timed out during banner exchange", False),
    ("", False),
])
def test_a_changed_host_key_is_not_waited_out(text: str, lasting: bool) -> None:
    why = rh.lasting_connection_failure(text)
    assert (why is not None) == lasting, why
    if lasting:
        assert "SSH host key is not the one known_hosts pins" in why and "waiting does not change that" in why


@pytest.mark.parametrize("check", [False, True])
def test_a_run_is_named_after_its_vars_file_also_in_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: bool) -> None:
    """The drill's details named a check-mode run "--check" (its last argument)."""
    monkeypatch.setattr(runner, "ansible_playbook_path", lambda: "ansible-playbook")
    argv = runner.playbook_argv(["inv.yml"], "d1", {}, str(tmp_path), "advanced_staged-check-1", check=check)
    assert runner.run_name(argv) == "advanced_staged-check-1"
