# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""A rehearsal's evidence record (:func:`.rehearsal.evidence_record`) as Markdown and HTML, in the
report's style (:mod:`.report_html`, with the report's escapers)."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from ansible_collections.osfleet.hup.plugins.plugin_utils.report_html import CSS, _e
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_render import _md


def to_markdown(record: Mapping[str, t.Any]) -> str:
    pair = record["pair"]
    lines = [
        f"# osfleet.hup rehearsal {_md(pair['device_type'])} {_md(pair['from_version'])} -> {_md(pair['to_version'])}",
        "",
        f"**{_md(record['status']).upper()}**: {_md(record['reason'])}",
        "",
        "| | |", "|---|---|",
        f"| bench devices | {_md(', '.join(record['devices']))} |",
        f"| device type | {_md(pair['device_type'])} |",
        f"| pair | {_md(pair['from_version'])} -> {_md(pair['to_version'])} |",
        f"| catalog digest | `{_md(pair['catalog_digest'])}` |",
        f"| method | {_md(record['method'])} |",
        *[f"| image {_md(k)} | `{_md(v)}` |" for k, v in sorted((record.get("image_digests") or {}).items())],
        f"| collection | osfleet.hup {_md(record['collection_version'])} |",
        f"| run | {_md(record['run_id'])} by {_md(record['operator'])}, {_md(record['started'])} .. {_md(record['ended'])} |",
        "",
        "| drill | device | outcome | duration | reason | proves |", "|---|---|---|---|---|---|",
    ]
    for drill in record["drills"]:
        lines.append(f"| {_md(drill['name'])} | {_md(drill.get('device'))} | {_md(drill['outcome'])} | {drill.get('duration', 0):.1f}s "
                     f"| {_md(drill.get('reason'))} "
                     f"| {_md(drill.get('proves'))} |")
    if record.get("logs"):
        lines += ["", "## Run logs pulled from the devices", ""]
        lines += [f"- {_md(name)}: {len(text.splitlines()) if isinstance(text, str) else 0} line(s)" for name, text in sorted(record["logs"].items())]
    return "\n".join(lines) + "\n"


_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "not_run": "#9e9e9e"}


def to_html(record: Mapping[str, t.Any]) -> str:
    pair = record["pair"]

    def badge(outcome: str) -> str:
        return f'<span class="badge" style="background:{_COLOURS.get(outcome, "#000")}">{_e(outcome.replace("_", " "))}</span>'

    meta = [("bench devices", ", ".join(record["devices"])), ("device type", pair["device_type"]), ("pair", f"{pair['from_version']} -> {pair['to_version']}"),
            ("catalog digest", pair["catalog_digest"]), ("method", record["method"]),
            *[(f"image {k}", v) for k, v in sorted((record.get("image_digests") or {}).items())],
            ("collection", f"osfleet.hup {record['collection_version']}"),
            ("run", f"{record['run_id']} by {record['operator']}, {record['started']} .. {record['ended']}")]
    rows = "".join(f'<tr class="drill" data-drill="{_e(d["name"])}" data-outcome="{_e(d["outcome"])}"><td class="name">{_e(d["name"])}</td>'
                   f'<td>{_e(d.get("device"))}</td>'
                   f'<td>{badge(d["outcome"])}</td><td class="num">{d.get("duration", 0):.1f}s</td><td class="reason">{_e(d.get("reason"))}</td>'
                   f'<td>{_e(d.get("proves"))}</td></tr>' for d in record["drills"])
    logs = "".join(f"<details><summary>{_e(name)}</summary><pre>{_e(text)}</pre></details>" for name, text in sorted((record.get("logs") or {}).items()))
    title = f"osfleet.hup rehearsal {pair['device_type']} {pair['from_version']} -> {pair['to_version']}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{CSS}</style></head><body>'
            f'<h1>{_e(title)}</h1><p>{badge(record["status"])} {_e(record["reason"])}</p>'
            f'<table class="meta">{"".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in meta)}</table>'
            '<h2>Drills</h2><table id="drills"><tr><th>drill</th><th>device</th><th>outcome</th><th>duration</th><th>reason</th>'
            f'<th>proves</th></tr>{rows}</table>'
            + (f"<h2>Run logs pulled from the devices</h2>{logs}" if logs else "") + "</body></html>\n")
