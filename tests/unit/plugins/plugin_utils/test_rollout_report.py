# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rollout_report: what osfleet.hup.rollout hands the report callback for the devices a revert run did not change."""

from __future__ import annotations

from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import report_stats, revert_word

REFUSED = {"status": "committed",
           "revert": {"status": "refused", "run": "r1", "reason": "dev3: not revertible: the other root partition resin-rootA was rewritten"}}


def test_a_refused_revert_gives_its_reason_once_without_the_device_name() -> None:
    word = revert_word(REFUSED, "r2", "dev3")
    assert word == {"outcome": "skipped", "outcome_text": "refused",
                    "reason": "not revertible: the other root partition resin-rootA was rewritten"}


def test_the_report_of_a_revert_names_a_refused_device_once() -> None:
    plan = {"id": "ro-1", "target_version": "2.113.0", "digest": "sha256:aa", "fleet": ["dev3"],
            "waves": [{"name": "canary", "order": 1, "hosts": ["dev3"], "max_failures": 0, "limit": "1"}]}
    state = {"status": "done", "waves": {"canary": {"status": "done"}},
             "revert": {"status": "incomplete", "waves": {"canary": {"status": "done"}}}}
    out = report_stats(plan, state, {"dev3": REFUSED}, "r2", "/rollouts/ro-1", revert=True)
    assert out["devices"]["dev3"]["reason"].startswith("not revertible: "), out["devices"]["dev3"]


def test_a_device_failed_in_an_earlier_run_gives_its_reason_without_the_device_name() -> None:
    plan = {"id": "ro-1", "target_version": "2.113.0", "digest": "sha256:aa", "fleet": ["dev1"],
            "waves": [{"name": "canary", "order": 1, "hosts": ["dev1"], "max_failures": 0, "limit": "1"}]}
    state = {"status": "halted", "waves": {"canary": {"status": "halted"}}}
    records = {"dev1": {"status": "failed", "run": "r1", "reason": "dev1: rolled back (health): the health check failed"}}
    out = report_stats(plan, state, records, "r2", "/rollouts/ro-1")
    assert out["devices"]["dev1"]["reason"] == "rolled back (health): the health check failed", out["devices"]["dev1"]
