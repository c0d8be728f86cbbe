# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hup_variable_problems filter; documentation in the sidecar file hup_variable_problems.yml."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.plugin_utils.variables import known_variables, role_facts, spec_problems, variable_problems

COLLECTION = Path(__file__).resolve().parents[2]
#: the roles whose argument specs name every variable of the collection (standard: entry points main and
#: update_playbook; advanced: its own)
ARGUMENT_SPECS = ("standard", "advanced", "rollout", "rehearse")
#: set by the playbook osfleet.hup.update for the role (its variables are checked by its pre_task)
INTERNAL = frozenset({"hup_variables_checked", "hup_rollout_slot"})


def _load(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # nosec B506: a safe loader (libyaml's when built with it)


# Each task of each host runs in a process of its own, so these caches last one check (which Ansible
# evaluates twice, for the assert's condition and its message); libyaml's loader makes the first
# read twenty times faster than the pure-Python one.
@functools.lru_cache(maxsize=None)
def _specs(role: str) -> Mapping[str, Any]:
    return _load(COLLECTION / "roles" / role / "meta" / "argument_specs.yml")


@functools.lru_cache(maxsize=None)
def _known() -> Mapping[str, Any]:
    known: dict[str, Any] = {}
    for role in ARGUMENT_SPECS:
        known.update(known_variables(_specs(role)))
    return known


@functools.lru_cache(maxsize=None)
def _role_facts() -> frozenset[str]:
    facts: set[str] = set()
    for tasks in sorted(COLLECTION.glob("roles/*/tasks/*.yml")):  # what the collection's roles set themselves
        facts |= role_facts(_load(tasks))
    return frozenset(facts)


def hup_variable_problems(given: Any, internal: Any = (), role: Any = None) -> list[str]:
    """Unknown hup_* names (with the closest known one) and booleans that are not booleans; the facts the
    collection's roles set (register, set_fact, task vars) and ``internal`` are not reported. With
    ``role`` (a role of the collection), when the names and booleans are right: what that role's
    argument validation (entry point main) refuses."""
    if not isinstance(given, Mapping):
        raise AnsibleFilterError(f"hup_variable_problems: the input must be a mapping of variable names to values; got {type(given).__name__}")
    if isinstance(internal, (str, bytes)) or not all(isinstance(n, str) for n in internal):
        raise AnsibleFilterError("hup_variable_problems: internal must be a list of variable names")
    if role is not None and role not in ARGUMENT_SPECS:
        raise AnsibleFilterError(f"hup_variable_problems: role must be one of {', '.join(ARGUMENT_SPECS)}; got {role!r}")
    internal_names = set(internal) | INTERNAL
    problems = variable_problems(given, _known(), internal_names)
    if problems:  # the roles' facts only take problems away: read their task files only when there are some
        problems = variable_problems(given, _known(), internal_names | _role_facts())
    if problems or role is None:
        return problems
    return spec_problems(given, _specs(role)["argument_specs"]["main"].get("options") or {})


class FilterModule:
    """The hup_* variables check."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"hup_variable_problems": hup_variable_problems}
