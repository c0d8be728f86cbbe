# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The playbook osfleet.hup.update uses the variables, with the defaults, that
``ansible-doc -t role osfleet.hup.standard`` documents (entry point ``update_playbook``)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = re.compile(r"\{\{\s*(hup_\w+)\s*\|\s*default\(\s*'?([^')]*)'?\s*\)\s*\}\}")


def test_update_playbook_variables_are_documented_with_their_defaults() -> None:
    play = yaml.safe_load((ROOT / "playbooks" / "update.yml").read_text(encoding="utf-8"))[0]
    used = {}
    for key in ("hosts", "serial", "max_fail_percentage"):
        match = DEFAULT.fullmatch(str(play[key]).strip())
        assert match, f"update.yml {key}: {play[key]!r} is not '{{{{ hup_... | default(...) }}}}'"
        used[match.group(1)] = match.group(2)
    specs = yaml.safe_load((ROOT / "roles" / "standard" / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))["argument_specs"]
    documented = {name: str(opt.get("default")) for name, opt in specs["update_playbook"]["options"].items()}
    assert documented == used, f"documented {documented}, the playbook uses {used}"
