# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The pure computations of `make bench` (tests/tools/bench.py): no lab, no clock, no I/O.

Tested by tests/unit/test_bench_stats.py. bench.py measures; this module turns its measurements
into the figures of the JSON document: ratios of interleaved pairs (median, min, max), the verdict
against an aim, a straight-line fit of how a figure grows with the fleet, the bytes the lab's
registries counted, the SSH commands a run sent, and where a run's time went.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA = 1


def ratio_summary(pairs: Sequence[tuple[float, float]], digits: int = 3) -> dict[str, Any]:
    """Pairs of (figure, baseline) measured interleaved -> each pair's ratio and the median, min and
    max of the ratios. A pair whose baseline is not positive has no ratio (None, left out)."""
    rows = []
    ratios = []
    for figure, baseline in pairs:
        ratio = figure / baseline if baseline > 0 else None
        rows.append({"figure": round(figure, digits), "baseline": round(baseline, digits),
                     "ratio": None if ratio is None else round(ratio, digits)})
        if ratio is not None:
            ratios.append(ratio)
    out: dict[str, Any] = {"pairs": rows, "n": len(ratios)}
    if ratios:
        out.update(median=round(statistics.median(ratios), digits), min=round(min(ratios), digits),
                   max=round(max(ratios), digits))
    else:
        out.update(median=None, min=None, max=None)
    return out


def verdict(value: float | None, aim: float | None) -> dict[str, Any]:
    """Whether ``value`` is at or below ``aim`` (``meets``: None when there is no aim or no value)."""
    if aim is None:
        return {"aim": None, "meets": None}
    return {"aim": f"<= {aim:g}", "meets": None if value is None else value <= aim}


def fit_line(xs: Sequence[float], ys: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Least-squares ``y = slope * x + intercept`` and r² (None where the points cannot say)."""
    if len(xs) != len(ys):
        raise ValueError("fit_line: xs and ys differ in length")
    if len(xs) < 2 or len(set(xs)) < 2:
        return {"slope": None, "intercept": None, "r2": None, "points": len(xs)}
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": round(slope, digits), "intercept": round(intercept, digits), "r2": round(r2, digits),
            "points": len(xs)}


def growth(sizes: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    """How a fleet figure grows: the fitted line over the fleet sizes and the exponent of a
    power law between the smallest and the largest fleet (1: linear, below 1: sublinear)."""
    line = fit_line([float(s) for s in sizes], values)
    exponent = None
    if len(sizes) >= 2 and min(sizes) > 0 and min(values) > 0 and max(sizes) != min(sizes):
        small, large = min(range(len(sizes)), key=sizes.__getitem__), max(range(len(sizes)), key=sizes.__getitem__)
        exponent = round(math.log(values[large] / values[small]) / math.log(sizes[large] / sizes[small]), 3)
    return {**line, "exponent": exponent}


_WRITTEN = re.compile(r'msg="response completed".*?http\.request\.method=(\w+).*?http\.request\.uri="?([^" ]+)"?.*?'
                      r'http\.response\.written=(\d+)')


def registry_bytes(lines: Iterable[str]) -> dict[str, Any]:
    """Bytes the registries sent: the sum of docker-registry's own ``http.response.written`` of its
    ``response completed`` log lines (response bodies; headers and TCP not counted), with the
    number of requests and the part of it that were blobs."""
    total = blobs = requests = 0
    for line in lines:
        match = _WRITTEN.search(line)
        if not match:
            continue
        written = int(match.group(3))
        requests += 1
        total += written
        if "/blobs/" in match.group(2):
            blobs += written
    return {"bytes": total, "blob_bytes": blobs, "requests": requests}


def task_breakdown(timing: Mapping[str, Any], host: str | None = None, top: int = 0) -> list[dict[str, Any]]:
    """Seconds per task of a run (the bench_timing callback's ``tasks``), longest first (``top``:
    only that many, 0: all). For one host: the seconds of its results, summed per task name. For
    all hosts: the wall time each task took in the play (its start to its last host's result),
    summed per task name."""
    spans: dict[tuple[str, float], float] = {}
    for task in timing.get("tasks", []):
        if host is not None and task.get("host") != host:
            continue
        key = (task["task"], task["start"])
        took = max(0.0, task["end"] - task["start"])
        spans[key] = spans.get(key, 0.0) + took if host is not None else max(spans.get(key, 0.0), took)
    seconds: dict[str, float] = {}
    for (name, _start), value in spans.items():
        seconds[name] = seconds.get(name, 0.0) + value
    rows = sorted(({"task": name, "seconds": round(value, 2)} for name, value in seconds.items()),
                  key=lambda row: -row["seconds"])
    return rows[:top] if top else rows


def ssh_times(lines: Iterable[str], wall_minus_monotonic: float) -> list[float]:
    """The ssh counter's lines ("ssh <wall seconds>") as times on the timing callback's monotonic
    clock (its ``wall_minus_monotonic``); lines without a stamp count for no task."""
    times = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "ssh":
            try:
                times.append(float(parts[1]) - wall_minus_monotonic)
            except ValueError:
                continue
    return times


def task_ssh(timing: Mapping[str, Any], host: str) -> dict[str, int]:
    """SSH commands per task name of one host's run: each of the timing's ``ssh`` times counts for
    the task whose result window (its start to the host's result) holds it; the tasks of one host
    run one after the other, so the windows do not overlap. Commands outside every window (start-up,
    wrap-up, the include's own) are not counted."""
    windows = [(t["start"], t["end"], t["task"]) for t in timing.get("tasks", []) if t.get("host") == host]
    counts: dict[str, int] = {}
    for at in timing.get("ssh", []):
        for start, end, name in windows:
            if start <= at <= end:
                counts[name] = counts.get(name, 0) + 1
                break
    return counts


def device_wait(timing: Mapping[str, Any], host: str) -> float:
    """Seconds the host's health step waited for the device's own rollback-health to commit (its
    ``waited`` when it says ``committed_by`` rollback-health; 0 when the step committed or no step
    says so)."""
    return round(sum(float(t["waited"]) for t in timing.get("tasks", [])
                     if t.get("host") == host and t.get("committed_by") == "rollback-health" and "waited" in t), 2)


STARTUP = "(ansible start-up: before the first play)"
WRAPUP = "(ansible wrap-up: after the last result)"


def run_phases(timing: Mapping[str, Any], started: float, ended: float) -> list[dict[str, Any]]:
    """The seconds of a run outside its tasks: from the process start to its first play, and from
    its last task result to its exit (the callback's clock is the system's monotonic clock, the one
    bench.py reads around the process). Nothing when the run has no timings."""
    plays = timing.get("plays") or []
    tasks = timing.get("tasks") or []
    if not plays:
        return []
    last = max([t["end"] for t in tasks] + [p["end"] for p in plays if p.get("end") is not None] + [plays[0]["start"]])
    return [{"task": STARTUP, "seconds": round(max(0.0, plays[0]["start"] - started), 2)},
            {"task": WRAPUP, "seconds": round(max(0.0, ended - last), 2)}]


def with_phases(rows: Sequence[Mapping[str, Any]], phases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A task breakdown with the run's start-up and wrap-up rows, longest first."""
    return sorted([dict(r) for r in rows] + [dict(p) for p in phases], key=lambda row: -row["seconds"])


def play_seconds(timing: Mapping[str, Any], name: str) -> float | None:
    """Wall seconds of the first play called ``name`` (the bench_timing callback's ``plays``)."""
    for play in timing.get("plays", []):
        if play.get("name") == name and play.get("end") is not None:
            return round(play["end"] - play["start"], 3)
    return None


def median_breakdown(breakdowns: Sequence[Sequence[Mapping[str, Any]]], top: int = 8) -> list[dict[str, Any]]:
    """The median seconds of each task over several runs' breakdowns, longest first."""
    values: dict[str, list[float]] = {}
    for rows in breakdowns:
        for row in rows:
            values.setdefault(row["task"], []).append(row["seconds"])
    rows_out = sorted(({"task": name, "seconds": round(statistics.median(v), 2)} for name, v in values.items()),
                      key=lambda row: -row["seconds"])
    return rows_out[:top] if top else rows_out


def median_counts(counts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each name's count over several runs (a run without the name counts 0)."""
    names = {name for row in counts for name in row}
    return {name: statistics.median(row.get(name, 0) for row in counts) for name in sorted(names)}


def step_comparison(breakdown: Sequence[Mapping[str, Any]], reference_phases: Mapping[str, float],
                    steps: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                    ssh: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The update's seconds step by step beside the reference's: ``steps`` are (step, substrings of
    the update's task names, the reference's phases) (no phase: the reference has no such step);
    a task counts for the first step one of whose substrings its name holds. The tasks no step
    names (``no_counterpart``, longest first) are what the update does that the reference does not.
    ``ssh``: SSH commands per task name (task_ssh, median_counts); each step then has ``update_ssh``."""
    used: set[str] = set()
    rows = []
    for step, needles, phases in steps:
        mine = [r for r in breakdown if r["task"] not in used and any(n in r["task"] for n in needles)]
        used.update(r["task"] for r in mine)
        update_s = round(sum(r["seconds"] for r in mine), 2)
        reference_s = round(sum(reference_phases.get(p, 0.0) for p in phases), 2)
        row: dict[str, Any] = {"step": step, "update_s": update_s, "reference_s": reference_s,
                               "extra_s": round(update_s - reference_s, 2)}
        if ssh is not None:
            row["update_ssh"] = sum(ssh.get(r["task"], 0) for r in mine)
        rows.append(row)
    rest = sorted((dict(r) for r in breakdown if r["task"] not in used and r["seconds"] > 0), key=lambda r: -r["seconds"])
    return {"steps": rows, "no_counterpart": rest, "no_counterpart_s": round(sum(r["seconds"] for r in rest), 2)}


def step_overhead_why(ratio: float | None, aim: float, figure_s: float, baseline_s: float,
                      breakdown: Sequence[Mapping[str, Any]], reference_phases: Mapping[str, float],
                      comparison: Mapping[str, Any] | None = None,
                      ssh: tuple[float, float] | None = None,
                      device_wait_s: float | None = None, ratio_without_wait: float | None = None) -> str | None:
    """Why the update missed its aim (None when it met it): the seconds above the reference, the SSH
    commands of each (``ssh``: update, reference), the steps beside the reference's
    (``comparison``: step_comparison, the largest extra first, with each step's SSH commands when
    counted) and the update's longest tasks, beside the reference's own phases. ``device_wait_s``:
    the median seconds the health step waited for the device's own rollback-health to commit (the
    reference commits at once), with the ratio the run would have without that wait."""
    if ratio is None or ratio <= aim:
        return None
    extra = figure_s - baseline_s
    parts = [f"the update took {figure_s:g}s against the reference's {baseline_s:g}s ({extra:+.1f}s, ratio {ratio:g} > {aim:g})"]
    if ssh is not None:
        parts.append(f"{ssh[0]:g} SSH commands per update against {ssh[1]:g} for the reference")
    if device_wait_s:
        without = f" (ratio without it {ratio_without_wait:g})" if ratio_without_wait is not None else ""
        parts.append(f"{device_wait_s:g}s of it the health step waited for the device's own rollback-health to test and "
                     f"commit, as the reference system's updater does; the reference commits at once{without}")
    if comparison:
        steps = sorted(comparison["steps"], key=lambda r: -r["extra_s"])
        parts.append("step by step, update against reference: " + ", ".join(
            f"{r['step']} {r['update_s']:g}s"
            + (f" ({r['update_ssh']:g} ssh)" if "update_ssh" in r else "")
            + f" vs {r['reference_s']:g}s" for r in steps))
        rest = ", ".join(f"{r['task'].split(' : ')[-1]} {r['seconds']:g}s" for r in comparison["no_counterpart"][:4])
        parts.append(f"no counterpart in the reference: {comparison['no_counterpart_s']:g}s ({rest})")
    tasks = ", ".join(f"{row['task'].split(' : ')[-1]} {row['seconds']:g}s" for row in breakdown[:5])
    ref = ", ".join(f"{name} {value:g}s" for name, value in reference_phases.items())
    parts.append(f"its longest tasks: {tasks}; the reference's phases: {ref}")
    return "; ".join(parts)


def noop_why(ratio: float | None, aim: float, breakdown: Sequence[Mapping[str, Any]], tasks_run: int,
             ssh: tuple[float, float] | None = None) -> str | None:
    """Why the re-run on devices already on the target missed its aim (None when it met it); ``ssh``:
    the SSH commands of the re-run and of the baseline."""
    if ratio is None or ratio <= aim:
        return None
    tasks = ", ".join(f"{row['task'].split(' : ')[-1]} {row['seconds']:g}s" for row in breakdown[:5])
    sent = f", {ssh[0]:g} SSH commands against the baseline's {ssh[1]:g}" if ssh is not None else ""
    return (f"ratio {ratio:g} > {aim:g}: the re-run still runs {tasks_run} task results for the devices "
            f"(one `raw` round trip does the baseline){sent}; its longest tasks: {tasks}")


def bytes_verdicts(delta: int, full: int, floor: int, aims: Mapping[str, float]) -> dict[str, Any]:
    """delta/floor and delta/full of one release pair, each with its aim's verdict."""
    out: dict[str, Any] = {}
    for name, numerator, denominator in (("delta_over_floor", delta, floor), ("delta_over_full", delta, full)):
        value = round(numerator / denominator, 4) if denominator > 0 else None
        out[name] = {"value": value, **verdict(value, aims.get(name))}
    return out


def count_lines(text: str) -> int:
    """Non-empty lines of a counter file (one line per counted event)."""
    return sum(1 for line in text.splitlines() if line.strip())


def per_device(value: float | None, devices: int, digits: int = 3) -> float | None:
    """``value`` divided over the devices (None when there is nothing to divide)."""
    if value is None or devices <= 0:
        return None
    return round(value / devices, digits)


def all_met(sections: Mapping[str, Any]) -> dict[str, Any]:
    """Every aim verdict found in the sections (``meets`` True/False), and whether all are met."""
    found: list[tuple[str, bool]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("meets"), bool):
                found.append((path, node["meets"]))
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(sections, "")
    return {"aims": len(found), "met": sum(1 for _p, ok in found if ok),
            "missed": [path for path, ok in found if not ok], "all_met": all(ok for _p, ok in found) if found else None}


def run_time(seconds: float, aim: float, parts: Mapping[str, float], load: tuple[float, float], cpus: int | None) -> dict[str, Any]:
    """The run's own wall time against its aim (``parts``: seconds per part of the run, the largest
    named first in ``why``; ``load``: the 1-minute load average at start and end)."""
    out: dict[str, Any] = {"wall_s": round(seconds, 1), **verdict(round(seconds, 1), aim),
                           "parts_s": {k: round(v, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])}}
    if seconds > aim:
        biggest = ", ".join(f"{k} {v:.0f}s" for k, v in list(out["parts_s"].items())[:4])
        out["why"] = (f"the run took {seconds:.0f}s against its aim of {aim:g}s, at a load average of {load[0]:g} -> {load[1]:g} "
                      f"on {cpus or '?'} CPUs; where the time went: {biggest}")
    return out


def document(mode: str, host: Mapping[str, Any], sections: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The one JSON document of a bench run."""
    return {"benchmark": "osfleet.hup", "schema": SCHEMA, "mode": mode, "host": dict(host),
            "wall_seconds": round(seconds, 1), "summary": all_met(sections), **sections}
