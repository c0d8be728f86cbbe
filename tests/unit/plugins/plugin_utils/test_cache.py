# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image cache model (plugin_utils.cache)."""

from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import oci_tag


@pytest.mark.parametrize(("text", "tag"), [("2.113.0", "2.113.0"), ("2.113.0+rev1", "2.113.0_rev1"), ("", "latest"), ("a/b:c", "a_b_c")])
def test_oci_tag(text: str, tag: str) -> None:
    assert oci_tag(text) == tag
