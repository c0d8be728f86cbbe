# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.rehearsal's drills on a bench device that stopped answering: the drill that finds it
so waits out the settle timeout once; the device's next drills of the rehearsal do not wait again
(they try once, or reflash it at once), and say which device, which drill found it so, and why."""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path
from types import SimpleNamespace

import pytest

from ansible_collections.osfleet.hup.plugins.action import rehearsal as action_mod
from ansible_collections.osfleet.hup.plugins.action.rehearsal import ActionModule
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_runner as runner
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import argspec_from_doc
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError

REFUSED = "ssh: connect to host 127.0.0.1 port 22301: Connection refused"
SETTLE = 1


class DeadDevice:
    """A DeviceSession stand-in for a device that never answers; ``events`` has each probe and each operator's command."""

    host = "bench-1"

    def __init__(self, events: list[tuple[str, float]]) -> None:
        self.events = events

    def reset_connection(self) -> None:
        pass

    def run_json(self, script: t.Any, *, what: str | None = None, **params: object) -> dict[str, t.Any]:
        self.events.append(("probe", time.monotonic()))
        raise DeviceError(f"{what}: {REFUSED}")

    def run(self, script: t.Any, *, check: bool = True, what: str | None = None, **params: object) -> t.Any:
        raise DeviceError(f"{what}: {REFUSED}")


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    seen: list[tuple[str, float]] = []

    def run_command(command: str, *, device: str, version: str = "", timeout: float = 600) -> runner.CommandRun:
        seen.append((command, time.monotonic()))
        return runner.CommandRun(command, 1 if command == "power-on-fails" else 0, "", 0.0)

    monkeypatch.setattr(action_mod.runner, "run_command", run_command)
    return seen


def drill(tmp_path: Path, events: list[tuple[str, float]], name: str, run_id: str = "r1", **given: t.Any) -> tuple[dict[str, t.Any], float]:
    plugin = ActionModule.__new__(ActionModule)
    plugin._task = SimpleNamespace(check_mode=False)  # pylint: disable=protected-access
    args = {k: o.get("default") for k, o in argspec_from_doc(ActionModule.DOCUMENTATION).items()}
    args.update(phase="drill", drill=name, from_version="2.88.4", to_version="2.113.0", run_id=run_id, inventory=[],
                work_dir=str(tmp_path / "drills"), settle_timeout=SETTLE, **given)
    start = time.monotonic()
    result = plugin.step(args, DeadDevice(events))  # type: ignore[arg-type]
    return result.data["drill"], time.monotonic() - start


def test_a_device_that_stopped_answering_is_not_waited_for_again_in_its_next_drills(tmp_path: Path, events: list[tuple[str, float]]) -> None:
    first, waited = drill(tmp_path, events, "update")
    assert first["outcome"] == "failed" and waited >= SETTLE, (first, waited)
    assert first["reason"].startswith(f"the device did not answer before the drill within the settle timeout ({SETTLE} s): "), first
    assert REFUSED in first["reason"]
    note = json.loads((tmp_path / "drills" / "bench-1" / "down.json").read_text())
    assert (note["run_id"], note["drill"]) == ("r1", "update") and REFUSED in note["reason"], note
    events.clear()
    second, waited = drill(tmp_path, events, "controller_killed")
    assert second["outcome"] == "failed" and waited < SETTLE, (second, waited)
    assert second["reason"].startswith("bench-1 is known not to answer (drill update, "), second
    assert "tried once, not waited for again: the device did not answer before the drill" in second["reason"], second
    assert [e[0] for e in events] == ["probe"], "more than one try"
    # another rehearsal (another run id) knows nothing of it: it waits again
    third, waited = drill(tmp_path, events, "update", run_id="r2")
    assert waited >= SETTLE and "known not to answer" not in third["reason"], third


def test_a_device_known_not_to_answer_is_reflashed_at_once(tmp_path: Path, events: list[tuple[str, float]]) -> None:
    (tmp_path / "drills" / "bench-1").mkdir(parents=True)
    note = rh.down_note("r1", "power_write", "the device did not answer after the drill within the settle timeout", time.time())
    (tmp_path / "drills" / "bench-1" / "down.json").write_text(json.dumps(note))
    result, _waited = drill(tmp_path, events, "update", commands={"reflash": "reflash-it"})
    assert events[0][0] == "reflash-it", "the device known not to answer was read before its reflash"
    assert [e[0] for e in events[1:]] == ["probe"] * (len(events) - 1) and len(events) > 2, "the read after the reflash waits"
    assert result["details"]["prepared"].startswith("reflashed with 2.88.4 (it did not answer in the drill power_write: "), result
    assert result["reason"].startswith("the device did not answer after it was brought to 2.88.4 within the settle timeout"), result


def test_a_power_on_that_failed_leaves_the_device_known_not_to_answer(tmp_path: Path, events: list[tuple[str, float]]) -> None:
    plugin = ActionModule.__new__(ActionModule)
    plugin.args = {"commands": {"power_on": "power-on-fails"}, "settle_timeout": SETTLE, "run_id": "r1", "drill": "power_write"}
    plugin.session, plugin.down = DeadDevice(events), None  # type: ignore[assignment]
    with pytest.raises(action_mod.DeviceDown, match=r"the device's power_on command failed \(exit 1\)"):
        plugin._command("power_on")  # pylint: disable=protected-access
    assert plugin.down is not None and plugin.down["drill"] == "power_write" and "power_on command failed" in plugin.down["reason"]


def test_what_is_known_of_a_device_is_this_rehearsal_s() -> None:
    note = rh.down_note("r1", "boot", "the device did not answer after the drill", 0.0)
    assert rh.known_down(note, "r1") == note and rh.known_down(note, "r2") is None and rh.known_down(None, "r1") is None
    assert rh.known_down({"run_id": "r1", "drill": "nope", "reason": "x"}, "r1") is None
    assert rh.first_read(None, True) == rh.READ_WAIT
    assert rh.first_read(note, True) == rh.READ_REFLASH and rh.first_read(note, False) == rh.READ_ONCE
    assert rh.not_waited("b1", note, "no answer").startswith("b1 is known not to answer (drill boot, 1970-01-01T00:00:00")
