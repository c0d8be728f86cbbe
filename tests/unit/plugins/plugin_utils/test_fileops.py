# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The file operations of the switch steps (plugin_utils.fileops)."""

from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import finish_ops, validate_ops


@pytest.mark.parametrize(
    "ops, error",
    [
        ([("put", "/mnt/boot/a", "x")], None),
        ([("copy", "/mnt/boot/a", "/mnt/sysroot/inactive/resin-boot/a")], None),
        ([("del", "/mnt/state/rollback-health-breadcrumb", "")], None),
        ([("put", "/etc/passwd", "x")], "outside"),
        ([("put", "/mnt/bootx/a", "x")], "outside"),
        ([("put", "/mnt/boot/../etc/x", "x")], "'..'"),
        ([("put", "/mnt/boot/a\nb", "x")], "line break"),
        ([("put", "/mnt/boot/a", "x\0y")], "NUL"),
        ([("copy", "/mnt/boot/a", "/mnt/sysroot/../x")], "'..'"),
        ([("chmod", "/mnt/boot/a", "")], "unknown"),
    ],
)
def test_validate_ops(ops, error):
    if error is None:
        validate_ops(ops)
    else:
        with pytest.raises((PlanError, ValueError), match=error):
            validate_ops(ops)


def test_finish_ops_keeps_the_new_temporary():
    ops = [("del", "/mnt/boot/a.osfleet-tmp", ""), ("del", "/mnt/boot/b.osfleet-tmp", ""), ("copy", "/mnt/boot/a", "/src/a")]
    assert finish_ops(ops) == [("del", "/mnt/boot/b.osfleet-tmp", ""), ("copy", "/mnt/boot/a", "/src/a")]
