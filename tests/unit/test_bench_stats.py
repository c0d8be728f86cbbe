# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure part of `make bench` (tests/tools/bench_stats.py): ratios, verdicts, fits, counters.
`make bench` itself is not part of `make test`; these tests are. The device-side baseline scripts
(tests/tools/bench_reference/) pass shellcheck as the device gets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import bench_stats as stats  # noqa: E402  pylint: disable=wrong-import-position


def test_ratio_summary_is_the_median_of_the_pairs_with_min_and_max():
    got = stats.ratio_summary([(12.0, 10.0), (30.0, 10.0), (11.0, 10.0)])
    assert [p["ratio"] for p in got["pairs"]] == [1.2, 3.0, 1.1]
    assert (got["median"], got["min"], got["max"], got["n"]) == (1.2, 1.1, 3.0, 3)


def test_ratio_summary_of_an_even_count_averages_the_middle_two():
    assert stats.ratio_summary([(1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0)])["median"] == 2.5


def test_ratio_summary_leaves_out_a_pair_without_a_baseline():
    got = stats.ratio_summary([(5.0, 0.0), (4.0, 2.0)])
    assert got["pairs"][0]["ratio"] is None
    assert (got["median"], got["n"]) == (2.0, 1)
    assert stats.ratio_summary([])["median"] is None


@pytest.mark.parametrize("value, aim, meets", [(1.25, 1.25, True), (1.26, 1.25, False), (None, 1.25, None), (3.0, None, None)])
def test_verdict(value, aim, meets):
    got = stats.verdict(value, aim)
    assert got["meets"] is meets
    assert got["aim"] == (None if aim is None else f"<= {aim:g}")


def test_fit_line_recovers_slope_and_intercept():
    got = stats.fit_line([5, 10, 20, 50], [2 * x + 3 for x in (5, 10, 20, 50)])
    assert (got["slope"], got["intercept"], got["r2"], got["points"]) == (2.0, 3.0, 1.0, 4)


def test_fit_line_needs_two_distinct_sizes():
    assert stats.fit_line([5], [1.0])["slope"] is None
    assert stats.fit_line([5, 5], [1.0, 2.0])["slope"] is None
    with pytest.raises(ValueError):
        stats.fit_line([1, 2], [1.0])


def test_growth_exponent_says_linear_or_sublinear():
    assert stats.growth([5, 50], [10.0, 100.0])["exponent"] == 1.0
    assert stats.growth([5, 50], [10.0, 10.0])["exponent"] == 0.0
    assert stats.growth([5], [10.0])["exponent"] is None


REGISTRY_LOG = [
    'time="t" level=info msg="listening on 127.0.0.1:1" version=2.8.2',
    'time="t" level=info msg="response completed" http.request.method=GET http.request.uri=/v2/ '
    'http.response.status=200 http.response.written=2',
    'time="t" level=info msg="response completed" http.request.method=GET '
    'http.request.uri="/v2/osfleet/x-delta/manifests/sha256:ab" http.response.written=4693',
    'time="t" level=info msg="response completed" http.request.method=GET '
    'http.request.uri="/v2/osfleet/x-delta/blobs/sha256:cd" http.response.status=200 http.response.written=3597990',
    '127.0.0.1 - - [07/Dec/2026:02:42:58 +0000] "GET /v2/ HTTP/1.1" 200 2 "" ""',
]


def test_registry_bytes_sums_the_registrys_own_counters():
    assert stats.registry_bytes(REGISTRY_LOG) == {"bytes": 2 + 4693 + 3597990, "blob_bytes": 3597990, "requests": 3}
    assert stats.registry_bytes([]) == {"bytes": 0, "blob_bytes": 0, "requests": 0}


TIMING = {
    "plays": [{"name": "Plan the rollout", "start": 10.0, "end": 12.5}, {"name": "Wave 1", "start": 12.5, "end": None}],
    "tasks": [
        {"task": "role : Fetch", "host": "a", "start": 1.0, "end": 4.0, "status": "ok"},
        {"task": "role : Write", "host": "a", "start": 4.0, "end": 10.0, "status": "ok"},
        {"task": "role : Fetch", "host": "b", "start": 1.0, "end": 2.0, "status": "ok"},
        {"task": "role : Fetch", "host": "a", "start": 11.0, "end": 12.0, "status": "skipped"},
    ],
}


def test_task_breakdown_per_host_sums_its_results():
    assert stats.task_breakdown(TIMING, "a") == [{"task": "role : Write", "seconds": 6.0}, {"task": "role : Fetch", "seconds": 4.0}]


def test_task_breakdown_of_all_hosts_is_each_tasks_wall_time_in_the_play():
    # Fetch ran on a and b at once (3 s, its last result), and once more later (1 s): 4 s, not 5
    assert stats.task_breakdown(TIMING) == [{"task": "role : Write", "seconds": 6.0}, {"task": "role : Fetch", "seconds": 4.0}]
    assert stats.task_breakdown(TIMING, top=1) == [{"task": "role : Write", "seconds": 6.0}]


def test_play_seconds_of_a_finished_play_only():
    assert stats.play_seconds(TIMING, "Plan the rollout") == 2.5
    assert stats.play_seconds(TIMING, "Wave 1") is None
    assert stats.play_seconds(TIMING, "nope") is None


def test_run_phases_are_the_seconds_outside_the_plays():
    got = stats.run_phases(TIMING, started=7.0, ended=14.0)  # last: the plan play ended at 12.5
    assert got == [{"task": stats.STARTUP, "seconds": 3.0}, {"task": stats.WRAPUP, "seconds": 1.5}]
    assert stats.run_phases({}, 0.0, 1.0) == []
    rows = stats.with_phases([{"task": "a", "seconds": 2.0}], got)
    assert [r["task"] for r in rows] == [stats.STARTUP, "a", stats.WRAPUP]


def test_median_breakdown_over_runs():
    runs = [[{"task": "x", "seconds": 1.0}, {"task": "y", "seconds": 9.0}], [{"task": "x", "seconds": 3.0}],
            [{"task": "x", "seconds": 2.0}]]
    assert stats.median_breakdown(runs) == [{"task": "y", "seconds": 9.0}, {"task": "x", "seconds": 2.0}]


def test_step_overhead_why_only_when_the_aim_is_missed():
    rows = [{"task": "osfleet.hup.standard : Write the inactive root partition", "seconds": 6.0}]
    assert stats.step_overhead_why(1.2, 1.25, 12.0, 10.0, rows, {"session": 8.0}) is None
    why = stats.step_overhead_why(1.5, 1.25, 15.0, 10.0, rows, {"session": 8.0, "reboot_wait": 2.0})
    assert "+5.0s" in why and "Write the inactive root partition 6s" in why and "reboot_wait 2s" in why


def test_step_comparison_pairs_the_updates_tasks_with_the_reference_phases():
    rows = [{"task": "r : Write the inactive root partition", "seconds": 9.0},
            {"task": "r : Arm the bootloader for the new root", "seconds": 11.0},
            {"task": "r : Take the update lock", "seconds": 5.0}, {"task": "r : Release the update lock", "seconds": 6.0},
            {"task": "r : Preflight", "seconds": 3.0}, {"task": "r : Name this run", "seconds": 0.0}]
    steps = [("write", ("Write the inactive",), ("fetched->written",)), ("arm", ("Arm the bootloader",), ("bootfiles->armed",)),
             ("lock take+release", ("update lock",), ())]
    got = stats.step_comparison(rows, {"fetched->written": 8.0, "bootfiles->armed": 0.2}, steps)
    assert got["steps"] == [{"step": "write", "update_s": 9.0, "reference_s": 8.0, "extra_s": 1.0},
                            {"step": "arm", "update_s": 11.0, "reference_s": 0.2, "extra_s": 10.8},
                            {"step": "lock take+release", "update_s": 11.0, "reference_s": 0.0, "extra_s": 11.0}]
    assert got["no_counterpart"] == [{"task": "r : Preflight", "seconds": 3.0}] and got["no_counterpart_s"] == 3.0
    why = stats.step_overhead_why(3.0, 1.25, 30.0, 10.0, rows, {"fetched->written": 8.0}, got, (57, 8))
    assert "57 SSH commands per update against 8" in why
    assert "lock take+release 11s vs 0s, arm 11s vs 0.2s, write 9s vs 8s" in why
    assert "no counterpart in the reference: 3s (Preflight 3s)" in why


def test_ssh_commands_count_for_the_task_whose_window_holds_them():
    # the wrapper's wall-clock stamps on the callback's monotonic clock (offset 1000 s)
    times = stats.ssh_times(["ssh 1010.5", "ssh", "ssh x", "ssh 1011.2", "ssh 1012.0", "ssh 1020.0"], 1000.0)
    assert times == pytest.approx([10.5, 11.2, 12.0, 20.0])
    timing = {"ssh": times, "tasks": [
        {"task": "r : Fetch", "host": "d1", "start": 10.0, "end": 11.0},
        {"task": "r : Write", "host": "d1", "start": 11.0, "end": 12.5},
        {"task": "r : Write", "host": "d2", "start": 19.0, "end": 21.0},
    ]}
    # d2's window holds the last stamp, start-up and wrap-up (outside every window) count for none
    assert stats.task_ssh(timing, "d1") == {"r : Fetch": 1, "r : Write": 2}
    assert stats.task_ssh(timing, "d2") == {"r : Write": 1}
    assert stats.median_counts([{"a": 1, "b": 4}, {"a": 3}, {"a": 2, "b": 2}]) == {"a": 2, "b": 2}
    rows = [{"task": "r : Fetch", "seconds": 1.0}, {"task": "r : Write", "seconds": 1.5}]
    got = stats.step_comparison(rows, {"x": 0.5}, [("fetch+write", ("Fetch", "Write"), ("x",))], {"r : Fetch": 1, "r : Write": 2})
    assert got["steps"] == [{"step": "fetch+write", "update_s": 2.5, "reference_s": 0.5, "extra_s": 2.0, "update_ssh": 3}]
    assert "fetch+write 2.5s (3 ssh) vs 0.5s" in stats.step_overhead_why(5.0, 1.25, 5.0, 1.0, rows, {"x": 0.5}, got)


def test_the_wait_for_the_devices_rollback_health_is_told_apart():
    timing = {"tasks": [
        {"task": "r : Verify", "host": "d1", "start": 0, "end": 2, "waited": 1.6, "committed_by": "rollback-health"},
        {"task": "r : Verify", "host": "d2", "start": 0, "end": 2, "waited": 1.2, "committed_by": "step"},
        {"task": "r : Fetch", "host": "d1", "start": 0, "end": 2},
    ]}
    # only a wait that ended in the device's own commit: when the step committed, it was the step's work
    assert stats.device_wait(timing, "d1") == 1.6 and stats.device_wait(timing, "d2") == 0.0
    assert stats.device_wait({}, "d1") == 0.0
    rows = [{"task": "r : Verify", "seconds": 2.0}]
    why = stats.step_overhead_why(2.5, 1.25, 8.6, 3.5, rows, {}, None, None, 1.6, 2.0)
    assert "1.6s of it the health step waited for the device's own rollback-health" in why and "(ratio without it 2)" in why
    assert "rollback-health" not in stats.step_overhead_why(2.5, 1.25, 8.6, 3.5, rows, {}, None, None, 0.0, 2.4)


def test_run_time_against_its_aim_names_the_largest_parts():
    assert stats.run_time(150.0, 180, {"a": 100.0, "b": 50.0}, (1.0, 2.0), 2) == {
        "wall_s": 150.0, "aim": "<= 180", "meets": True, "parts_s": {"a": 100.0, "b": 50.0}}
    got = stats.run_time(627.7, 180, {"fleet": 238.0, "step_overhead": 270.4, "bytes": 9.0}, (8.76, 12.26), 2)
    assert got["meets"] is False and list(got["parts_s"]) == ["step_overhead", "fleet", "bytes"]
    assert got["why"] == ("the run took 628s against its aim of 180s, at a load average of 8.76 -> 12.26 on 2 CPUs; "
                          "where the time went: step_overhead 270s, fleet 238s, bytes 9s")


def test_noop_why_names_the_tasks():
    assert stats.noop_why(2.0, 2.5, [], 3) is None
    why = stats.noop_why(3.4, 2.5, [{"task": "r : Preflight", "seconds": 1.5}], 30)
    assert "30 task results" in why and "Preflight 1.5s" in why
    assert "14 SSH commands against the baseline's 2" in stats.noop_why(3.4, 2.5, [], 30, (14, 2))


def test_bytes_verdicts():
    got = stats.bytes_verdicts(1300, 10000, 1000, {"delta_over_floor": 1.3, "delta_over_full": 0.15})
    assert got["delta_over_floor"] == {"value": 1.3, "aim": "<= 1.3", "meets": True}
    assert got["delta_over_full"] == {"value": 0.13, "aim": "<= 0.15", "meets": True}
    assert stats.bytes_verdicts(2000, 10000, 0, {})["delta_over_floor"] == {"value": None, "aim": None, "meets": None}


def test_counters_and_per_device():
    assert stats.count_lines("ssh\nssh\n\n ssh \n") == 3
    assert stats.per_device(10.0, 4) == 2.5
    assert stats.per_device(None, 4) is None and stats.per_device(1.0, 0) is None


def test_document_summarises_every_verdict():
    sections = {"step_overhead": {"profiles": {"ab": {"meets": True}, "balenaos": {"meets": False}}},
                "bytes": {"pairs": [{"delta_over_floor": {"meets": True}, "delta_over_full": {"meets": None}}]},
                "fleet": {"error": "lab down"}}
    doc = stats.document("quick", {"cpus": 2}, sections, 12.34)
    assert doc["summary"] == {"aims": 3, "met": 2, "missed": ["step_overhead.profiles.balenaos"], "all_met": False}
    assert (doc["mode"], doc["wall_seconds"], doc["fleet"]) == ("quick", 12.3, {"error": "lab down"})
    json.dumps(doc)
    assert stats.all_met({})["all_met"] is None


@pytest.mark.parametrize("name", sorted(p.name for p in (TOOLS / "bench_reference").glob("*.sh")))
def test_reference_scripts_as_sent_pass_shellcheck(name):
    from ansible_collections.osfleet.hup.plugins.plugin_utils import shell  # pylint: disable=import-outside-toplevel
    body = (TOOLS / "bench_reference" / name).read_text()
    proc = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2034", "-"], input=shell.library().text_for(body) + body,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_measured_reads_the_wall_time_when_the_process_ends_not_at_the_next_sample(monkeypatch, tmp_path):
    """The wall time of a run is read when it ends: the tree's memory is sampled between waits, but
    the wait itself wakes up with the end of the process. (It polled with time.sleep(0.2): every wall
    time up to 0.2 s late, on a baseline of 0.8 s.) A sampling pause of 3 s makes the difference plain
    without timing the machine: a run of `sleep 0.3` must not take the pause."""
    import bench  # noqa: E402  pylint: disable=import-outside-toplevel

    monkeypatch.setattr(bench, "LOG_DIR", tmp_path)
    monkeypatch.setattr(bench, "SAMPLE_INTERVAL", 3.0, raising=False)
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: pytest.fail(f"measured() slept {seconds}s"))
    run = bench.measured(["sleep", "0.3"], "wall")
    assert run.rc == 0
    assert run.wall < 2.0, run
