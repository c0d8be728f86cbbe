# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each module's RETURN documents what the module returns on a lab device, no more, no less.

One lab device is updated in check mode and for real with ``osfleet.hup.update``, and
``osfleet.hup.device_info`` reads it before and after; every result of an ``osfleet.hup`` step is
held against its module's RETURN: each key returned (at every level RETURN describes with
``contains``) is documented, and each key documented as ``returned: always`` (or ``success``, on
success) is there.
"""

from __future__ import annotations

import importlib
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, TaskResult, ansible_playbook

LAB_PREFIX = "itreturns"
LAB_DEVICES = 1
TARGET = "2.113.0"
#: keys Ansible itself (the task executor, the action base) puts into every result
ANSIBLE_KEYS = {"changed", "failed", "msg", "diff", "invocation", "skipped", "skip_reason", "warnings", "deprecations", "exception",
                "_ansible_no_log", "_ansible_verbose_always", "_ansible_verbose_override", "_ansible_delegated_vars", "ansible_facts",
                "failed_when_result", "changed_when_result", "attempts", "retries"}

DEVICE_INFO_PLAY = """\
- name: Read every device
  hosts: all
  gather_facts: false
  tasks:
    - name: Device info
      osfleet.hup.device_info:
"""


def returns_doc(action: str) -> dict[str, t.Any]:
    module = importlib.import_module(f"ansible_collections.osfleet.hup.plugins.modules.{action.rsplit('.', 1)[1]}")
    return yaml.safe_load(module.RETURN) or {}


def mismatches(value: t.Mapping[str, t.Any], doc: t.Mapping[str, t.Any], path: str, ok: bool, top: bool) -> list[str]:
    """What in ``value`` RETURN does not document, and what RETURN promises that ``value`` lacks."""
    problems = []
    for key in value:
        if top and (key in ANSIBLE_KEYS or key.startswith("_ansible")):
            continue
        if key not in doc:
            problems.append(f"{path}{key}: returned but not in RETURN")
    for key, spec in doc.items():
        returned = str((spec or {}).get("returned", "always" if not top else "")).lower()
        promised = returned.startswith("always") or (ok and returned.startswith("success"))
        if key not in value:
            if promised and top:
                problems.append(f"{path}{key}: RETURN says returned {returned}, missing")
            continue
        contains = (spec or {}).get("contains")
        sub = value[key]
        if contains and isinstance(sub, dict):
            problems += mismatches(sub, contains, f"{path}{key}.", ok, top=False)
        elif contains and isinstance(sub, list):
            for i, item in enumerate(sub):
                if isinstance(item, dict):
                    problems += mismatches(item, contains, f"{path}{key}[{i}].", ok, top=False)
    return problems


def catalog_play(lab: Lab, work: Path) -> Path:
    """osfleet.hup.catalog on the controller: the target release into a new catalog file, in check mode,
    for real, and again (no change)."""
    primary, release = lab.catalog()["registries"]["primary"], lab.release(TARGET)
    args = {"path": str(work / "own-catalog.json"), "image": f"{primary}/{release['repository']}:{release['tag']}",
            "layout": release["layout"], "registry_insecure": True}
    tasks = [{"name": "Describe the release (check mode)", "osfleet.hup.catalog": args, "check_mode": True},
             {"name": "Describe the release", "osfleet.hup.catalog": args},
             {"name": "Describe the release again", "osfleet.hup.catalog": args}]
    book = work / "catalog.yml"
    book.write_text(yaml.safe_dump([{"name": "Catalog", "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}],
                                   sort_keys=False), encoding="utf-8")
    return book


def takeover_play(work: Path) -> Path:
    """osfleet.hup.takeover on the x86 device, whose catalog release has no disk image: state=absent (no
    staging: no change) and state=staged, which fails naming the missing disk image (ignored)."""
    args = {"catalog": "{{ hup_catalog }}", "target_version": TARGET}
    tasks = [{"name": "No staging to remove", "osfleet.hup.takeover": {**args, "state": "absent"}},
             {"name": "Stage without a disk image (fails)", "osfleet.hup.takeover": args, "ignore_errors": True}]
    book = work / "takeover.yml"
    book.write_text(yaml.safe_dump([{"name": "Takeover", "hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False),
                    encoding="utf-8")
    return book


def rehearsal_play(work: Path) -> Path:
    """osfleet.hup.rehearsal: a drill the device has no command for (not run: nothing touched), and
    the evidence record of it (failed: the update drill did not pass) into the work directory."""
    args = {"from_version": TARGET, "to_version": TARGET, "run_id": "returns"}
    tasks = [{"name": "A drill without its commands", "osfleet.hup.rehearsal": {**args, "phase": "drill", "drill": "link_cut"},
              "register": "drill"},
             {"name": "Its evidence", "osfleet.hup.rehearsal": {**args, "phase": "evidence", "results": ["{{ drill }}"],
                                                                "catalog": "{{ hup_catalog }}", "dir": str(work / "evidence")}}]
    book = work / "rehearsal.yml"
    book.write_text(yaml.safe_dump([{"name": "Rehearsal", "hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False),
                    encoding="utf-8")
    return book


@pytest.fixture(scope="module")
def runs(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> list[PlaybookRun]:
    work = tmp_path_factory.mktemp("returns")
    play = work / "device_info.yml"
    play.write_text(DEVICE_INFO_PLAY, encoding="utf-8")
    done = [ansible_playbook(lab, workdir=work, playbook=str(play))]
    done.append(ansible_playbook(lab, "--check", "--diff", workdir=work, extra_vars={"hup_target_version": TARGET}))
    done.append(ansible_playbook(lab, "--diff", workdir=work, extra_vars={"hup_target_version": TARGET}))
    done.append(ansible_playbook(lab, workdir=work, playbook=str(play)))
    done.append(ansible_playbook(lab, "--diff", workdir=work, playbook=str(catalog_play(lab, work))))
    done.append(ansible_playbook(lab, workdir=work, playbook=str(takeover_play(work))))
    # osfleet.hup.rollout: every phase, the device already on the target (its record: current; the
    # rehearsal gate reads it: no pair to rehearse)
    done.append(ansible_playbook(lab, workdir=work, playbook="osfleet.hup.rollout", extra_vars={
        "hup_target_version": TARGET, "hup_rollout_id": "returns", "hup_rollout_dir": str(work / "rollout"),
        "hup_waves": [{"name": "all", "percent": 100}], "hup_require_rehearsal": "30d",
        "hup_rehearsal_dir": str(work / "evidence")}))
    done.append(ansible_playbook(lab, workdir=work, playbook=str(rehearsal_play(work))))
    for run in done:
        assert run.rc == 0, run.summary()
    return done


def step_results(runs: list[PlaybookRun]) -> list[TaskResult]:
    return [r for run in runs for r in run.results if r.action.startswith("osfleet.hup.") and r.event in ("ok", "failed")]


def test_every_step_ran(runs: list[PlaybookRun]) -> None:
    ran = {r.action for r in step_results(runs)}
    modules = {f"osfleet.hup.{p.stem}" for p in (Path(__file__).resolve().parents[2] / "plugins" / "modules").glob("*.py")}
    assert ran == modules, f"not exercised here: {sorted(modules - ran)}"


def test_results_match_return_docs(runs: list[PlaybookRun]) -> None:
    problems = []
    for r in step_results(runs):
        found = mismatches(r.result, returns_doc(r.action), "", ok=r.event == "ok", top=True)
        problems += [f"{r.action} ({r.task}): {p}" for p in found]
    assert not problems, "\n".join(sorted(set(problems)))
