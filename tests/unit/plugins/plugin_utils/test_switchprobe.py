# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsing the switch probe (plugin_utils.switchprobe)."""

from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import parse_listing, parse_switch_probe


@pytest.mark.parametrize(
    "sha_text, size_text, other, files, bad",
    [
        ("", "", "", {}, ()),
        (f"{'1' * 64}  ./a\n", "3 ./a\n", "", {"a": ("1" * 64, 3, "")}, ()),
        (f"{'1' * 64}  ./dir/with space\n", "3 ./dir/with space\n", "", {"dir/with space": ("1" * 64, 3, "")}, ()),
        # a name with a line break: the probe lists it among the others too
        (f"{'1' * 64}  ./bad\nname\n", "3 ./bad\nname\n", "./bad\nname\n", {}, ("name", "bad")),
        # listed by sha256sum but not by stat (vanished in between)
        (f"{'1' * 64}  ./a\n", "", "", {}, ("a",)),
        # a dangling symlink or a device node
        ("", "", "./dangling\n", {}, ("dangling",)),
        # a component that check_path refuses
        (f"{'1' * 64}  ./a/./b\n", "3 ./a/./b\n", "", {}, ("a/./b",)),
        ("garbage\n", "", "", {}, ("garbage",)),
    ],
)
def test_parse_listing(sha_text, size_text, other, files, bad):
    listing = parse_listing(sha_text, size_text, other)
    assert {k: tuple(v) for k, v in listing.files.items()} == files
    assert set(listing.bad) == set(bad)


def test_parse_listing_md5():
    sha_text = f"{'1' * 64}  ./a\n{'2' * 64}  ./dir/b c\n"
    md5_text = f"{'3' * 32}  ./dir/b c\n{'4' * 32}  ./gone\ngarbage\n"
    listing = parse_listing(sha_text, "3 ./a\n4 ./dir/b c\n", md5_text=md5_text)
    assert listing.files == {"a": ("1" * 64, 3, ""), "dir/b c": ("2" * 64, 4, "3" * 32)}
    assert listing.bad == ()  # md5 lines never make a file bad: they only feed the fingerprint


def test_parse_switch_probe_not_listed():
    probe = parse_switch_probe({"listed": "0", "health_variables_present": "1", "health_variables": "X=1", "rollback_marker_present": "0"})
    assert probe.boot is None and probe.boot_free_bytes is None and not probe.listed
    assert probe.health_variables == "X=1" and probe.rollback_marker is None


def test_parse_switch_probe_listed():
    raw = {
        "listed": "1", "boot_statfs": "100 4096",
        "boot_sha": f"{'2' * 64}  ./zImage\n", "boot_md5": f"{'3' * 32}  ./zImage\n", "boot_size": "5 ./zImage\n", "boot_other": "",
        "active_present": "1", "active_sha": "", "active_size": "", "active_other": "",
        "inactive_present": "0",
        "rollback_marker_present": "1", "rollback_marker": '{"reason": "checks"}',
    }
    probe = parse_switch_probe(raw)
    assert probe.boot_free_bytes == 409600
    assert probe.boot.files["zImage"].size == 5 and probe.boot.files["zImage"].md5 == "3" * 32
    assert probe.payloads["active"].present and not probe.payloads["inactive"].present
    assert probe.rollback_marker == {"reason": "checks"}


def test_parse_switch_probe_unreadable_marker():
    probe = parse_switch_probe({"rollback_marker_present": "1", "rollback_marker": "not json"})
    assert probe.rollback_marker["reason"] == "unknown"
