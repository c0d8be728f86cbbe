# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``ansible-doc`` shows of each step module is what its action plugin accepts.

The action base builds the argument spec from DOCUMENTATION (``action.argspec_from_doc``, the
module's own options over its fragments'); ``ansible-doc`` merges the doc fragments its own way.
The two must agree on every option's presence, ``required``, type, default and choices: an option
marked required in the docs but optional in the code (or the other way round) misleads operators.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.action import argspec_from_doc

MODULES_DIR = Path(__file__).resolve().parents[4] / "plugins" / "modules"
MODULES = sorted(p.stem for p in MODULES_DIR.glob("*.py") if p.stem != "__init__")
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"


@pytest.fixture(scope="module")
def shown() -> dict[str, dict[str, t.Any]]:
    """ansible-doc --json of every module: {module: options}."""
    proc = subprocess.run([str(ANSIBLE_DOC), "--json", "-t", "module", *(f"osfleet.hup.{m}" for m in MODULES)],
                          capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    return {name.rsplit(".", 1)[1]: doc["doc"].get("options") or {} for name, doc in docs.items()}


def test_every_module_is_shown(shown: dict[str, dict[str, t.Any]]) -> None:
    assert sorted(shown) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_matches_the_argument_spec(module: str, shown: dict[str, dict[str, t.Any]]) -> None:
    doc = importlib.import_module(f"ansible_collections.osfleet.hup.plugins.modules.{module}").DOCUMENTATION
    spec = argspec_from_doc(doc)
    options = shown[module]
    assert sorted(options) == sorted(spec), f"{module}: ansible-doc shows {sorted(options)}, the action accepts {sorted(spec)}"
    for name, opt in options.items():
        code = spec[name]
        where = f"osfleet.hup.{module} option {name}"
        assert bool(opt.get("required")) == bool(code.get("required")), f"{where}: ansible-doc says required={bool(opt.get('required'))}, the action {bool(code.get('required'))}"
        assert opt.get("type", "str") == code.get("type", "str"), where
        assert opt.get("default") == code.get("default"), f"{where}: default {opt.get('default')!r} shown, {code.get('default')!r} used"
        assert opt.get("choices") == code.get("choices"), where
