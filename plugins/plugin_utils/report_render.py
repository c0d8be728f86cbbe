# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The run report as files and text: report.json, junit.xml, report.md, the summary table.

Each function takes the dict of :meth:`report.ReportBuilder.build` (pure, no I/O except
:func:`write_reports`, which writes every file atomically). The HTML page is ``report_html``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import FAILED_OUTCOMES, counts_text
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_html import to_html

Report = t.Mapping[str, t.Any]
FILES = ("report.json", "junit.xml", "report.md", "report.html")


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(round(value)), 60)
    return f"{minutes}m{secs:02d}s"


def versions(dev: Report) -> str:
    before, after = dev.get("version_before") or "?", dev.get("version_after") or "?"
    target = dev.get("target_version") or "?"
    return f"{before} -> {after}" if after == target or dev["outcome"] in ("committed", "current") else f"{before} -> {after} (target {target})"


def step_times(dev: Report) -> str:
    return ", ".join(f"{s['step']} {seconds(s['duration'])}" for s in dev.get("steps") or [])


# --- report.json --------------------------------------------------------------------------------

def to_json(report: Report) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"


# --- junit.xml ----------------------------------------------------------------------------------

def to_junit(report: Report) -> str:
    """One testsuite per wave, one testcase per device; failures carry the step and the reason."""
    run = report["run"]
    root = ET.Element("testsuites", {
        "name": f"osfleet.hup {run['playbook'] or 'run'} {run['id']}",
        "tests": str(report["totals"]["devices"]),
        "failures": str(sum(report["totals"][o] for o in FAILED_OUTCOMES)),
        "errors": "0",
        "skipped": str(report["totals"]["skipped"] + report["totals"]["deferred"]),
        "time": f"{run['duration']:.3f}",
    })
    by_name = {d["name"]: d for d in report["devices"]}
    for wave in report["waves"]:
        members = [by_name[n] for n in wave["devices"]]
        suite = ET.SubElement(root, "testsuite", {
            "name": wave["name"],
            "tests": str(len(members)),
            "failures": str(sum(1 for d in members if d["outcome"] in FAILED_OUTCOMES)),
            "errors": "0",
            "skipped": str(sum(1 for d in members if d["outcome"] in ("skipped", "deferred"))),
            "time": f"{sum(d['duration'] or 0 for d in members):.3f}",
            "timestamp": (wave["started"] or run["started"] or "").rstrip("Z"),
        })
        props = ET.SubElement(suite, "properties")
        for key, value in (("halted", str(wave["halted"]).lower()), ("decision", wave["decision"])):
            ET.SubElement(props, "property", {"name": key, "value": str(value)})
        for dev in members:
            case = ET.SubElement(suite, "testcase", {
                "classname": "osfleet.hup." + re.sub(r"[^A-Za-z0-9_-]+", "_", wave["name"]).strip("_"),
                "name": dev["name"], "time": f"{dev['duration'] or 0:.3f}",
            })
            detail = f"{dev['outcome_text']}: {dev['reason']}" if dev["reason"] else dev["outcome_text"]
            if dev["outcome"] in FAILED_OUTCOMES:
                failure = ET.SubElement(case, "failure", {"type": dev["outcome"], "message": detail})
                failure.text = dev.get("message") or detail
            elif dev["outcome"] in ("skipped", "deferred"):
                ET.SubElement(case, "skipped", {"message": detail})
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([
                f"outcome: {dev['outcome_text']}", f"versions: {versions(dev)}",
                f"method: {dev['method'] or '-'}; source: {dev['source'] or '-'}; bytes: {dev['bytes'] if dev['bytes'] is not None else '-'}",
                f"run log on the device: {dev['run_log'] or '-'}", f"steps: {step_times(dev) or '-'}",
            ])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# --- report.md ----------------------------------------------------------------------------------

def _md(value: t.Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    # device and catalog text is data: no table breaks, no HTML a Markdown viewer would render
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    run = report["run"]
    lines = [
        f"# osfleet.hup run {run['id']}",
        "",
        f"- playbook: {_md(run['playbook'])}{' (check mode)' if run['check_mode'] else ''}",
        f"- started {run['started']}, ended {run['ended']} ({seconds(run['duration'])})",
        f"- target: {', '.join(run['target_versions']) or '-'}",
        f"- devices: {report['totals']['devices']} ({counts_text(report['totals'])})",
        f"- verdict: {'ok' if run['ok'] else 'FAILED'}" + (f", halted in {', '.join(run['halted_waves'])}" if run["halted"] else ""),
        "",
        "## Waves",
        "",
        "| # | wave | devices | counts | started | ended | halt decision |",
        "|---|---|---|---|---|---|---|",
    ]
    for wave in report["waves"]:
        lines.append(f"| {wave['order']} | {_md(wave['name'])} | {len(wave['devices'])} | {_md(counts_text(wave['counts']))} | "
                     f"{_md(wave['started'])} | {_md(wave['ended'])} | {'HALTED: ' if wave['halted'] else ''}{_md(wave['decision'])} |")
    lines += [
        "",
        "## Devices",
        "",
        "| device | wave | from | to | versions from | method | source | bytes | time | outcome | run log |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dev in report["devices"]:
        lines.append(
            f"| {_md(dev['name'])} | {_md(dev['wave'])} | {_md(dev['version_before'])} | {_md(dev['version_after'])} | "
            f"{_md(dev.get('versions_from'))} | {_md(dev['method'])} | {_md(dev['source'])} | {_md(human_bytes(dev['bytes']))} | {seconds(dev['duration'])} | "
            f"{_md(dev['outcome_text'])} | {_md(dev['run_log'])} |")
    problems = [d for d in report["devices"] if d["reason"]]
    if problems:
        lines += ["", "## Failures, rollbacks and deferred devices", ""]
        lines += [f"- **{_md(d['name'])}**: {_md(d['outcome_text'])}: {_md(d['reason'])}" for d in problems]
    lines += ["", "## Time per step", ""]
    lines += [f"- {_md(d['name'])}: {_md(step_times(d))}" for d in report["devices"] if d["steps"]]
    return "\n".join(lines) + "\n"


# --- the summary printed at the end of the run --------------------------------------------------

def summary_table(report: Report, where: str | None = None) -> str:
    headers = ("device", "wave", "from -> to", "method", "source", "bytes", "time", "outcome")
    rows = [(d["name"], d["wave"], f"{d['version_before'] or '?'} -> {d['version_after'] or '?'}", d["method"] or "-",
             d["source"] or "-", human_bytes(d["bytes"]), seconds(d["duration"]), d["outcome_text"]) for d in report["devices"]]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*r).rstrip() for r in [headers, tuple("-" * w for w in widths), *rows]]
    out += [f"wave {w['name']}: {counts_text(w['counts'])}; {'HALTED: ' if w['halted'] else ''}{w['decision']}" for w in report["waves"]]
    out += [f"{d['name']}: {d['outcome_text']}: {d['reason']}" for d in report["devices"] if d["reason"]]
    not_tried = report["run"].get("not_tried") or []
    if not_tried:
        out.append(f"not tried: {', '.join(not_tried)} (Ansible stopped the play before their batch: a serial batch in which every device"
                   " failed or was unreachable ends the play, as do more failures than max_fail_percentage)")
    if where:
        out.append(f"report: {where}")
    return "\n".join(out)


# --- files --------------------------------------------------------------------------------------

def render(report: Report) -> dict[str, str]:
    return {"report.json": to_json(report), "junit.xml": to_junit(report), "report.md": to_markdown(report), "report.html": to_html(report)}


def write_reports(report: Report, directory: str | os.PathLike[str]) -> list[Path]:
    """Write the four files into ``directory`` (made when missing), each atomically (tmp + rename)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(report).items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target / name)
    return written
