# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.variables and the filter hup_variable_problems: misspelled hup_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.filter.variables import hup_variable_problems
from ansible_collections.osfleet.hup.plugins.plugin_utils.variables import known_variables, plain, role_facts, spec_problems, variable_problems

ROOT = Path(__file__).resolve().parents[4]
SPECS = {"argument_specs": {
    "main": {"options": {"hup_target_version": {"type": "str"}, "hup_allow_downgrade": {"type": "bool"}, "hup_catalog": {}}},
    "update_playbook": {"options": {"hup_serial": {"type": "str"}}},
}}
KNOWN = known_variables(SPECS)


@pytest.mark.parametrize(("given", "problems"), [
    ({"hup_target_version": "2.113.0", "hup_serial": "10%"}, []),
    ({"hup_target_versoin": "2.113.0"}, ["unknown variable hup_target_versoin; did you mean hup_target_version?"]),
    ({"hup_srial": 1}, ["unknown variable hup_srial; did you mean hup_serial?"]),
    ({"hup_zzz": 1}, ["unknown variable hup_zzz (the known ones: ansible-doc -t role osfleet.hup.standard)"]),
    ({"hup_allow_downgrade": "ture"}, ["hup_allow_downgrade must be true or false, not 'ture'"]),
    ({"hup_allow_downgrade": 2}, ["hup_allow_downgrade must be true or false, not 2"]),
    ({"hup_allow_downgrade": "Yes"}, []),
    ({"hup_allow_downgrade": False}, []),
    ({"hup_allow_downgrade": 0}, []),
    ({"hup_allow_downgrade": None}, []),
    ({"other_var": 1, "ansible_host": "x"}, []),
    ({"hup_preflight": {}}, []),  # internal, below
])
def test_variable_problems(given: dict, problems: list[str]) -> None:
    assert variable_problems(given, KNOWN, internal={"hup_preflight"}) == problems


def test_role_facts_walks_blocks() -> None:
    tasks = [
        {"name": "a", "ansible.builtin.set_fact": {"hup_a": 1, "cacheable": True}},
        {"name": "b", "block": [{"name": "c", "x": {}, "register": "hup_c", "vars": {"hup_step": "s"}}],
         "rescue": [{"set_fact": {"hup_d": 2}}], "always": [{"register": "hup_e"}]},
    ]
    assert role_facts(tasks) == {"hup_a", "hup_c", "hup_step", "hup_d", "hup_e"}


def test_the_filter_knows_the_roles_variables_and_facts() -> None:
    specs = yaml.safe_load((ROOT / "roles" / "standard" / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    documented = {name: "x" for name in known_variables(specs) if known_variables(specs)[name].get("type") != "bool"}
    assert "hup_target_version" in documented and "hup_serial" in documented
    facts = {"hup_preflight": {}, "hup_failure": {}, "hup_run_log": "x", "hup_run_id_effective": "x", "hup_variables_checked": True}
    assert hup_variable_problems({**documented, **facts}) == []
    assert hup_variable_problems({"hup_target_versoin": "2.113.0"}) == ["unknown variable hup_target_versoin; did you mean hup_target_version?"]


def test_the_filter_refuses_bad_input() -> None:
    with pytest.raises(AnsibleFilterError, match="must be a mapping"):
        hup_variable_problems(["hup_x"])
    with pytest.raises(AnsibleFilterError, match="internal must be a list"):
        hup_variable_problems({}, internal="hup_x")


def test_every_role_default_is_documented() -> None:
    """A default the argument specs lack would make every run stop with 'unknown variable'."""
    specs = yaml.safe_load((ROOT / "roles" / "standard" / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((ROOT / "roles" / "standard" / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert hup_variable_problems(defaults) == []
    assert not set(defaults) - set(known_variables(specs))


OPTIONS = {
    "hup_target_version": {"type": "str", "required": True, "description": "the target"},
    "hup_health_retries": {"type": "int", "default": 30},
    "hup_writer": {"type": "str", "choices": ["auto", "export"], "default": "auto"},
    "hup_extra_keep": {"type": "list", "elements": "str", "default": []},
}


@pytest.mark.parametrize(("given", "problems"), [
    ({"hup_target_version": "2.113.0", "hup_health_retries": "5", "hup_extra_keep": ["a"], "other": object()}, []),
    ({}, ["missing required arguments: hup_target_version"]),
    ({"hup_target_version": "2.113.0", "hup_health_retries": "abc"},
     ["argument 'hup_health_retries' is of type str and we were unable to convert to int: \"'abc'\" cannot be converted to an int"]),
    ({"hup_target_version": "2.113.0", "hup_writer": "zzz"}, ["value of hup_writer must be one of: auto, export, got: zzz"]),
])
def test_spec_problems_are_the_argument_validations_in_one_sentence_each(given: dict, problems: list[str]) -> None:
    assert spec_problems(given, OPTIONS) == problems


def test_plain_copies_subclasses_as_their_base_types() -> None:
    class Tagged(str):
        pass

    class Lazy(dict):  # type: ignore[type-arg]
        def __deepcopy__(self, memo: dict) -> None:
            raise AssertionError("deep-copied")

    value = plain(Lazy(a=[Tagged("x"), (1, 2.5, True, None)], b=Lazy()))
    assert value == {"a": ["x", [1, 2.5, True, None]], "b": {}}
    assert [type(v).__name__ for v in (value, value["a"][0], value["b"])] == ["dict", "str", "dict"]
    assert spec_problems({"hup_target_version": Tagged("2.113.0"), "hup_extra_keep": Lazy()}, OPTIONS) == \
        ["argument 'hup_extra_keep' is of type dict and we were unable to convert to list: <class 'dict'> cannot be converted to a list"]


def test_the_filter_checks_a_roles_argument_spec_when_the_names_are_right() -> None:
    assert hup_variable_problems({"hup_catalog": "c"}, role="standard") == ["missing required arguments: hup_target_version"]
    assert hup_variable_problems({"hup_catalog": "c", "hup_target_version": "2.113.0"}, role="standard") == []
    # a misspelled boolean gets its own sentence only, not the validation's as well
    assert hup_variable_problems({"hup_allow_downgrade": "ture"}, role="standard") == ["hup_allow_downgrade must be true or false, not 'ture'"]
    assert hup_variable_problems({"hup_catalog": "c"}) == [], "without role: names and booleans only"
    with pytest.raises(AnsibleFilterError, match="role must be one of"):
        hup_variable_problems({}, role="nope")
