# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The steps' decision tests (one file per steps/<step>.py) share the model devices of the directory
above: switch_model.py (boot and state partitions) and prepare_model.py (probe and catalog)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prepare_model import make_catalog  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(name="catalog")
def fixture_catalog() -> Catalog:
    return make_catalog()
