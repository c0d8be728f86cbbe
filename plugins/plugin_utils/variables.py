# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The ``hup_*`` variables a run was given, held against the ones the collection knows.

Ansible accepts any variable name, so ``-e hup_target_versoin=2.113.0`` or a typo in group_vars
is silently ignored, and a misspelled boolean (``hup_allow_downgrade: ture``) fails the role's
argument validation with the whole argument spec in the message. :func:`variable_problems` names
each such mistake in one sentence, with the closest known name; :func:`spec_problems` what the
role's argument validation refuses (a required variable missing, a wrong type), also one sentence
each.
"""

from __future__ import annotations

import difflib
import typing as t
from collections.abc import Iterable, Mapping

#: the variable prefix of this collection
PREFIX = "hup_"
#: what Ansible's own boolean conversion accepts (ansible.module_utils.parsing.convert_bool)
BOOL_STRINGS = frozenset({"y", "yes", "on", "1", "true", "t", "n", "no", "off", "0", "false", "f"})


def known_variables(specs: Mapping[str, t.Any]) -> dict[str, Mapping[str, t.Any]]:
    """Every option of every entry point of a role's ``argument_specs`` (name -> option)."""
    known: dict[str, Mapping[str, t.Any]] = {}
    for entry in (specs.get("argument_specs") or specs).values():
        for name, option in ((entry or {}).get("options") or {}).items():
            known.setdefault(name, option or {})
    return known


def _is_bool(value: t.Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value in (0, 1)
    return isinstance(value, str) and value.strip().lower() in BOOL_STRINGS


def variable_problems(given: Mapping[str, t.Any], known: Mapping[str, Mapping[str, t.Any]], internal: Iterable[str] = ()) -> list[str]:
    """One sentence per unknown ``hup_*`` name (with the closest known one) and per bool that is not one.

    ``internal``: names the role sets itself (its facts), which are neither documented options nor typos.
    """
    internal_names = set(internal)
    names = sorted(known)
    problems = []
    for name in sorted(given):
        if not name.startswith(PREFIX) or name in internal_names:
            continue
        if name not in known:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else " (the known ones: ansible-doc -t role osfleet.hup.standard)"
            problems.append(f"unknown variable {name}{hint}")
            continue
        value = given[name]
        if known[name].get("type") == "bool" and value is not None and not _is_bool(value):
            problems.append(f"{name} must be true or false, not {value!r}")
    return problems


def spec_problems(given: Mapping[str, t.Any], options: Mapping[str, Mapping[str, t.Any]]) -> list[str]:
    """What a role's argument validation refuses in ``given`` (required options, types, choices),
    one sentence each: the validation ``ansible.builtin.validate_argument_spec`` does for a role's
    entry point (the values of its options among ``given``), without the whole spec it prints."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # pylint: disable=import-outside-toplevel

    # plain copies: the validator deep-copies its input, and Ansible's lazily templated containers
    # copy their whole templating context with them (2.3 s a host, measured)
    params = {name: plain(given[name]) for name in options if name in given}
    return [str(message) for message in ArgumentSpecValidator(dict(options)).validate(params).error_messages]


def plain(value: t.Any) -> t.Any:
    """``value`` as plain Python data: dicts, lists, str, int, float, bool and None (subclasses such as
    Ansible's lazily templated containers and tagged strings become their base type)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    for base in (str, int, float, bytes):
        if isinstance(value, base):
            return base(value)
    return value


_SET_FACT = ("ansible.builtin.set_fact", "set_fact")
_NESTED = ("block", "rescue", "always")


def role_facts(tasks: t.Any) -> set[str]:
    """The variable names a task list sets itself: ``register``, ``set_fact`` keys and task ``vars``
    (blocks, rescues and always sections included)."""
    names: set[str] = set()
    for task in tasks or []:
        if not isinstance(task, Mapping):
            continue
        if isinstance(task.get("register"), str):
            names.add(task["register"])
        for key in _SET_FACT:
            if isinstance(task.get(key), Mapping):
                names.update(k for k in task[key] if k != "cacheable")
        if isinstance(task.get("vars"), Mapping):
            names.update(task["vars"])
        for key in _NESTED:
            names |= role_facts(task.get(key))
    return names
