# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal_render: the evidence record as Markdown and HTML."""

from __future__ import annotations

from rehearsal_records import record

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_render


def test_markdown_and_html_carry_every_drill_escaped() -> None:
    rec = record(outcomes={"update": "passed", "link_cut": "not_run"})
    rec["drills"][1]["reason"] = "no <link> | command"
    md, page = rehearsal_render.to_markdown(rec), rehearsal_render.to_html(rec)
    assert "| link_cut | - | not_run |" in md and "no &lt;link&gt; \\| command" in md
    assert 'data-drill="link_cut" data-outcome="not_run"' in page and "&lt;link&gt;" in page and "<link>" not in page
