# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""report.html: one self-contained page (inline CSS and SVG, no script, no external asset).

Per wave: counts, the halt decision and a timeline (one bar per device from its first to its last
step, coloured by outcome, :data:`COLOURS`); per device: versions (and where they came from: ``versions_from``), method, source, bytes, outcome,
rollback, run log and the time of each step. Element classes the screenshot test reads:
``tr.wave``, ``tr.device`` (``data-device``, ``data-outcome``), ``rect.bar`` (``data-device``,
``data-outcome``).
"""

from __future__ import annotations

import html
import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import OUTCOMES, counts_text, parse_iso

Report = t.Mapping[str, t.Any]

#: the colour of each outcome on the page (bars, badges, legend)
COLOURS = {
    "committed": "#2e7d32",
    "current": "#607d8b",
    "planned": "#1e88e5",
    "failed": "#c62828",
    "rolled_back": "#ef6c00",
    "unreachable": "#6a1b9a",
    "incomplete": "#ad1457",
    "deferred": "#f9a825",
    "skipped": "#9e9e9e",
}
CHART_WIDTH, LABEL_WIDTH, ROW, MIN_BAR = 760, 200, 24, 6

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#212121;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right}.meta td:first-child{font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600}
.halted{color:#c62828;font-weight:700}.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
td.reason{min-width:160px}td.log{min-width:160px}td.name{white-space:nowrap}code{font-size:12px}#devices{width:100%}
details summary{cursor:pointer}svg text{font-size:12px;fill:#212121}
"""


def _e(value: t.Any) -> str:
    return html.escape("-" if value is None or value == "" else str(value), quote=True)


def _badge(outcome: str, text: str) -> str:
    return f'<span class="badge" style="background:{COLOURS.get(outcome, "#000")}">{_e(text)}</span>'


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _ticks(span: float) -> list[float]:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400):
        if span / step <= 8:
            return [i * step for i in range(int(span // step) + 1)]
    return [0.0, span]


def _timeline(report: Report) -> str:
    """One SVG: per wave a heading row, then one row per device with its bar."""
    devices = {d["name"]: d for d in report["devices"]}
    times = [parse_iso(d[k]) for d in report["devices"] for k in ("started", "ended") if d[k]]
    run_start = parse_iso(report["run"]["started"]) or 0.0
    start = min([run_start, *[x for x in times if x is not None]])
    end = max([parse_iso(report["run"]["ended"]) or start, *[x for x in times if x is not None]])
    span = max(end - start, 1.0)
    scale = CHART_WIDTH / span
    rows: list[str] = []
    y = 24
    for wave in report["waves"]:
        mark = " (halted)" if wave["halted"] else ""
        rows.append(f'<text class="wave-label" x="4" y="{y + 16}" font-weight="700">wave {wave["order"]}: {_e(wave["name"])}{mark}</text>')
        y += ROW
        for name in wave["devices"]:
            dev = devices[name]
            rows.append(f'<text x="14" y="{y + 16}">{_e(name)}</text>')
            first, last = parse_iso(dev["started"]), parse_iso(dev["ended"])
            if first is None:
                rows.append(f'<text x="{LABEL_WIDTH + 4}" y="{y + 16}" fill="#757575">not started ({_e(dev["outcome_text"])})</text>')
            else:
                x = LABEL_WIDTH + (first - start) * scale
                width = max(((last or first) - first) * scale, MIN_BAR)
                steps = "; ".join(f"{s['step']} {_fmt_s(s['duration'])}" for s in dev["steps"])
                rows.append(
                    f'<rect class="bar" data-device="{_e(name)}" data-outcome="{_e(dev["outcome"])}" x="{x:.1f}" y="{y + 4}" '
                    f'width="{width:.1f}" height="{ROW - 8}" rx="3" fill="{COLOURS[dev["outcome"]]}">'
                    f'<title>{_e(name)}: {_e(dev["outcome_text"])}, {_e(dev["started"])} to {_e(dev["ended"])} '
                    f'({_fmt_s(dev["duration"])}); {_e(steps)}</title></rect>')
            y += ROW
    axis = [f'<line x1="{LABEL_WIDTH}" y1="18" x2="{LABEL_WIDTH + CHART_WIDTH}" y2="18" stroke="#9e9e9e"/>']
    for tick in _ticks(span):
        x = LABEL_WIDTH + tick * scale
        label = f"{tick:.0f}s" if span < 600 else f"{tick / 60:.0f}m"
        axis.append(f'<line x1="{x:.1f}" y1="14" x2="{x:.1f}" y2="{y}" stroke="#eeeeee"/>')
        axis.append(f'<text x="{x + 2:.1f}" y="12">+{label}</text>')
    height = y + 8
    return (f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + CHART_WIDTH + 20}" height="{height}" '
            f'role="img" aria-label="timeline of the waves">{"".join(axis)}{"".join(rows)}</svg>')


def _legend() -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{COLOURS[o]}"></i>{o.replace("_", " ")}</span>' for o in OUTCOMES) + "</p>"


def _row(kind: str, attrs: dict[str, t.Any], cells: list[tuple[str, str]]) -> str:
    """``<tr class=kind data-..>`` with one ``<td>`` per (html, css class) cell."""
    data = "".join(f' data-{k}="{_e(v)}"' for k, v in attrs.items())
    tds = "".join(f'<td class="{css}">{content}</td>' if css else f"<td>{content}</td>" for content, css in cells)
    return f'<tr class="{kind}"{data}>{tds}</tr>'


def _wave_rows(report: Report) -> str:
    return "".join(_row("wave", {"wave": w["name"]}, [
        (str(w["order"]), "num"), (_e(w["name"]), ""), (str(len(w["devices"])), "num"), (_e(counts_text(w["counts"])), ""),
        (_e(w["started"]), ""), (_e(w["ended"]), ""),
        (f'<span class="halted">HALTED</span>: {_e(w["decision"])}' if w["halted"] else _e(w["decision"]), ""),
    ]) for w in report["waves"])


def _device_rows(report: Report) -> str:
    return "".join(_row("device", {"device": d["name"], "outcome": d["outcome"]}, [
        (_e(d["name"]), "name"), (_e(d["wave"]), ""), (_e(d["version_before"]), ""), (_e(d["version_after"]), ""),
        (_e(d["target_version"]), ""), (_e(d.get("versions_from")), ""), (_e(d["method"]), ""), (_e(d["source"]), ""),
        ("-" if d["bytes"] is None else f'{d["bytes"]:,}', "num"), (_fmt_s(d["duration"]), "num"),
        (_badge(d["outcome"], d["outcome_text"]), ""), (f'yes ({_e(d["rollback_reason"])})' if d["rolled_back"] else "no", ""),
        (_e(d["reason"]), "reason"), (f'<code>{_e(d["run_log"]).replace("/", "/<wbr>").replace(".", ".<wbr>")}</code>', "log"),
    ]) for d in report["devices"])


def _step_tables(report: Report) -> str:
    out = []
    for dev in report["devices"]:
        if not dev["steps"]:
            continue
        rows = "".join(
            f'<tr class="step"><td>{_e(s["step"])}</td><td>{_e(s["module"])}</td><td>{_e(s["status"])}</td>'
            f'<td>{_e(s["started"])}</td><td class="num">{_fmt_s(s["duration"])}</td><td>{_e(s["msg"])}</td></tr>'
            for s in dev["steps"])
        out.append(f'<details class="steps" data-device="{_e(dev["name"])}"><summary>{_e(dev["name"])}: '
                   f'{len(dev["steps"])} steps, {_fmt_s(dev["duration"])}</summary><table><tr><th>step</th><th>module</th>'
                   f'<th>status</th><th>started</th><th>time</th><th>message</th></tr>{rows}</table></details>')
    return "".join(out)


def to_html(report: Report) -> str:
    run = report["run"]
    totals = counts_text(report["totals"])
    verdict = "ok" if run["ok"] else "FAILED"
    if run["halted"]:
        verdict += " (halted in " + ", ".join(run["halted_waves"]) + ")"
    rollout = report.get("rollout") or {}
    meta = [("run", run["id"]), ("playbook", run["playbook"] + (" (check mode)" if run["check_mode"] else "")),
            ("started", run["started"]), ("ended", run["ended"]), ("duration", _fmt_s(run["duration"])),
            ("target", ", ".join(run["target_versions"])), ("devices", f"{report['totals']['devices']}: {totals}"),
            ("verdict", verdict)]
    meta += [(f"rollout {k}", v) for k, v in rollout.items() if isinstance(v, (str, int, float, bool))]
    meta_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>osfleet.hup run {_e(run["id"])}</title><style>{CSS}</style></head>
<body>
<h1>osfleet.hup run {_e(run["id"])}</h1>
<table class="meta">{meta_rows}</table>
<h2>Waves</h2>
<table id="waves"><tr><th>#</th><th>wave</th><th>devices</th><th>counts</th><th>started</th><th>ended</th><th>halt decision</th></tr>
{_wave_rows(report)}</table>
<h2>Timeline</h2>
{_legend()}
{_timeline(report)}
<h2>Devices</h2>
<table id="devices"><tr><th>device</th><th>wave</th><th>from</th><th>to</th><th>target</th><th>versions from</th><th>method</th><th>source</th><th>bytes</th>
<th>time</th><th>outcome</th><th>rollback</th><th>reason</th><th>run log on the device</th></tr>{_device_rows(report)}</table>
<h2>Time per step</h2>
{_step_tables(report)}
</body></html>
"""
