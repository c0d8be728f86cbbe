# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release a step works towards (plugin_utils.release)."""

from __future__ import annotations

import json
import typing as t

import pytest
from prepare_model import (
    CATALOG,
    D113,
    GX,
    stamp,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import open_catalog, stamp_summary


def test_open_catalog_names_the_catalog(tmp_path: t.Any) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CatalogError, match=f"catalog file {missing} does not exist"):
        open_catalog({"catalog": str(missing)})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match=f"catalog {bad} is not valid JSON"):
        open_catalog({"catalog": str(bad)})
    good = tmp_path / "good.json"
    good.write_text(json.dumps(CATALOG))
    assert open_catalog({"catalog": str(good)}).release(GX, "2.113.0").digest == D113


def test_stamp_summary() -> None:
    assert stamp_summary(None) is None
    assert stamp_summary(stamp("2.113.0", D113)) == {"device_type": GX, "version": "2.113.0", "digest": D113, "source": "provision"}


def test_open_catalog_applies_the_pin(tmp_path: t.Any) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(CATALOG))
    with pytest.raises(CatalogError, match=f"refusing the catalog {good}: its sha256 is "):
        open_catalog({"catalog": str(good), "catalog_sha256": "0" * 64})
    with pytest.raises(CatalogError, match="refusing the catalog http://127.0.0.1:1/c.json: plain HTTP"):
        open_catalog({"catalog": "http://127.0.0.1:1/c.json"})
    with pytest.raises(CatalogError, match="cannot fetch catalog http://127.0.0.1:1/c.json"):
        open_catalog({"catalog": "http://127.0.0.1:1/c.json", "catalog_allow_http": True})
