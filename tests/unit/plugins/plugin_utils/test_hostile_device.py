# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lying or broken device must not hang or crash the controller (issue 7, item 14): every input
from the device is bounded and refused with a message naming what and why, parsing is linear,
JSON nesting errors are caught. The outcomes are asserted, never the time taken."""

from __future__ import annotations

import typing as t
from types import SimpleNamespace

import pytest
from prepare_model import make_state

from ansible_collections.osfleet.hup.plugins.plugin_utils import balena_semver, version
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import SCRIPT_OUTPUT_LIMIT, CommandResult, DeviceSession
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import FILE_LIMIT, json_object, parse_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import parse_switch_probe

#: a VERSION that took the old regular expression minutes (its pre-release and dot parts could
#: match the same text two ways); 2500 repeats already take a measurable time, and fail to parse
HOSTILE = "2.88.4-a" + ".a" * 60000 + "!"


def raw_of(**changes: str) -> dict[str, t.Any]:
    raw = dict(make_state().raw)
    raw.update(changes)
    return raw


def test_a_version_longer_than_the_limit_is_refused_unparsed():
    text = "2.88.4-a" + ".a" * 2500 + "!"
    with pytest.raises(ValueError, match=rf"\({len(text)} characters\): longer than {version.MAX_LENGTH} characters"):
        version.parse_version(text)
    with pytest.raises(ValueError, match="longer than 256 characters"):
        version.parse_version(HOSTILE)
    assert not version.same_version(HOSTILE, "2.88.4")


@pytest.mark.parametrize("text, parsed", [
    ("2.88.4-" + ".".join(["a-b"] * 60), ("a-b",) * 60),
    ("2.88.4-a" + ".a" * 100 + "+rev3", ("a",) * 101),
    ("2.88.4" + ".dev" * 1 + ".a" * 0, ()),
])
def test_long_versions_within_the_limit_parse(text, parsed):
    assert len(text) <= version.MAX_LENGTH
    assert version.parse_version(text).prerelease == parsed


@pytest.mark.parametrize("text", ["2.88.4-a" + ".a" * 120 + "!", "2.88.4" + ".a" * 120 + "+", "2.88.4-a.+b", "2.88.4-" + "-" * 200 + "."])
def test_hostile_versions_within_the_limit_are_refused(text):
    assert len(text) <= version.MAX_LENGTH
    with pytest.raises(ValueError, match="expected MAJOR.MINOR.PATCH"):
        version.parse_version(text)


def test_balena_semver_never_normalizes_an_overlong_text(monkeypatch):
    """normalize()'s patterns take quadratic time on "1.1.1.1..." (4000 characters: 6 s)."""
    def refuse(text: str) -> str:
        raise AssertionError(f"normalize() was given {len(text)} characters")
    monkeypatch.setattr(balena_semver, "normalize", refuse)
    hostile = "1." * 60000
    assert balena_semver.parse(hostile) is None
    assert balena_semver.compare(hostile, hostile + "1") == -1


def test_an_os_release_larger_than_the_limit_is_refused():
    with pytest.raises(DeviceError, match="/etc/os-release on the device is larger than 64 KiB .*refusing to read it"):
        parse_state(raw_of(os_release=f'VERSION="{HOSTILE}"\nSLUG=x\n'))


def test_an_overlong_version_in_a_small_os_release_is_refused():
    osr = 'VERSION="2.88.4' + "+rev1" * 200 + '"\nSLUG=genericx86-64-ext\n'
    with pytest.raises(DeviceError, match="/etc/os-release on the device has a VERSION of 1006 characters, more than 256"):
        parse_state(raw_of(os_release=osr))
    with pytest.raises(DeviceError, match="/mnt/sysroot/inactive/etc/os-release on the device has a VERSION of"):
        parse_state(raw_of(inactive_os_release=osr))


@pytest.mark.parametrize("key, path", [
    ("inactive_stamp", "/mnt/sysroot/inactive/.osfleet-release.json"),
    ("config_json", "/mnt/boot/config.json"),
    ("uenv", "/mnt/boot/resinOS_uEnv.txt"),
    ("lock", "/mnt/state/osfleet/hup.lock"),
])
def test_every_file_the_probe_reads_is_bounded(key, path):
    assert len(raw_of()[key]) <= FILE_LIMIT
    with pytest.raises(DeviceError, match=f"{path} on the device is larger than 64 KiB"):
        parse_state(raw_of(**{key: "x" * (FILE_LIMIT + 1)}))
    # undecodable bytes arrive as surrogate escapes, one per byte
    with pytest.raises(DeviceError, match=f"{path} on the device is larger than 64 KiB"):
        parse_state(raw_of(**{key: "é" * (FILE_LIMIT // 2 + 1)}))


def test_any_other_probe_value_is_bounded():
    with pytest.raises(DeviceError, match="the device probe's df is larger than 64 KiB"):
        parse_state(raw_of(df="/mnt/data 1 2\n" * 6000))


def test_the_switch_probe_files_are_bounded():
    raw = {"listed": "0", "rollback_marker_present": "1", "rollback_marker": '{"reason": "checks"}' + " " * FILE_LIMIT}
    with pytest.raises(DeviceError, match="/mnt/state/osfleet-rollback on the device is larger than 64 KiB"):
        parse_switch_probe(raw)


def test_deeply_nested_json_from_the_device_is_no_crash():
    nested = "[" * 200000 + "]" * 200000
    assert json_object(nested) is None
    state = parse_state(raw_of(inactive_stamp="{\"a\":" * 10000 + "1" + "}" * 10000))
    assert state.inactive_stamp is None
    with pytest.raises(DeviceError, match="the device printed no valid JSON .*nested too deeply"):
        CommandResult(0, nested, "").json()


class _Action:
    """An action whose device prints ``stdout`` for every command."""

    def __init__(self, stdout: str) -> None:
        self.stdout = stdout
        self._connection = SimpleNamespace()

    def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
        return {"rc": 0, "stdout": self.stdout, "stderr": ""}


def test_script_output_is_bounded():
    session = DeviceSession(t.cast(t.Any, _Action("{}" + " " * SCRIPT_OUTPUT_LIMIT)), "dev1")
    with pytest.raises(DeviceError, match="device probe: the device printed 32 MiB, more than the 32 MiB a device script may print"):
        session.run("boot_id", what="device probe")
    assert DeviceSession(t.cast(t.Any, _Action("{}")), "dev1").run_json("boot_id") == {}


def test_a_cached_image_with_deeply_nested_json_is_no_crash():
    from ansible_collections.osfleet.hup.plugins.plugin_utils.writer import _cached_image
    name = "a" * 64
    assert _cached_image({"name": name, "index": "[" * 100000 + "]" * 100000}) is None
    image = _cached_image({"name": name, "index": f'["sha256:{name}"]', "meta": "{\"a\":" * 100000 + "1" + "}" * 100000})
    assert image is not None and image.kind == ""
