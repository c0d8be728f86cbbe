# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options a step module documents, with their defaults: the unit tests build a step's
arguments from them, as the action plugin's argument validation does (the defaults live in the
module DOCUMENTATION only)."""

from __future__ import annotations

import importlib
import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils.action import argspec_from_doc


def documented(module: str, **given: t.Any) -> dict[str, t.Any]:
    """The arguments of ``osfleet.hup.<module>`` with their documented defaults (suboptions too), then ``given``."""
    doc = importlib.import_module(f"ansible_collections.osfleet.hup.plugins.modules.{module}").DOCUMENTATION
    args = {name: _default(opt) for name, opt in argspec_from_doc(doc).items()}
    args.update(given)
    return args


def _default(opt: t.Mapping[str, t.Any]) -> t.Any:
    if "options" in opt and opt.get("default") is not None:
        return {name: _default(sub) for name, sub in opt["options"].items()}
    return opt.get("default")
