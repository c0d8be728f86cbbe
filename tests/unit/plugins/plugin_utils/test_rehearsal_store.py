# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal_store: the evidence directory, the catalog digest, the gate of the rollout's start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rehearsal_records import DIGEST, NOW, PAIR, record

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_store as store
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import RolloutError


def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"schema": 1, "registries": {"primary": "127.0.0.1:5000"}, "releases": [
        {"device_type": PAIR.device_type, "version": "2.113.0", "repository": "osfleet/x", "digest": DIGEST}]}))
    return path


def test_the_store_keeps_json_markdown_html_and_reads_them_back(tmp_path: Path) -> None:
    paths = store.save(str(tmp_path / "ev"), record())
    assert sorted(Path(p).suffix for p in paths.values()) == [".html", ".json", ".md"]
    assert store.records(str(tmp_path / "ev")) == [record()]
    (Path(paths["json"]).parent / "broken.json").write_text("{")
    with pytest.raises(rh.RehearsalError, match="cannot read the rehearsal record .*broken.json"):
        store.records(str(tmp_path / "ev"))


def test_the_down_note_of_a_device_is_kept_read_back_and_removed_when_it_answers(tmp_path: Path) -> None:
    path = store.down_note_path(str(tmp_path / "drills"), "bench-1")
    assert path == str(tmp_path / "drills" / "bench-1" / "down.json")
    assert store.load_down_note(path) is None  # none yet
    note = rh.down_note("r1", "boot", "the device did not answer after the drill", 0.0)
    store.save_down_note(path, note)
    assert store.load_down_note(path) == note and rh.known_down(store.load_down_note(path), "r1") == note
    store.save_down_note(path, None)  # the device answered: no note
    assert not Path(path).exists() and store.load_down_note(path) is None
    store.save_down_note(path, None)  # nothing to remove
    Path(path).write_text("{")
    assert store.load_down_note(path) is None  # unreadable: as if there were none


def test_the_rollout_start_refuses_without_evidence_and_lists_in_check_mode(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    digest = store.target_digests(str(cat), [PAIR.device_type], "2.113.0")[PAIR.device_type]
    assert digest and digest.startswith("sha256:")
    pair = rh.Pair(PAIR.device_type, "2.88.4", "2.113.0", digest)
    plan = {"id": "r1", "target_version": "2.113.0", "fleet": ["dev1", "dev2", "dev9"]}
    spec = {"require": "7d", "dir": str(tmp_path / "ev"),
            "devices": {"dev1": {"device_type": PAIR.device_type, "version": "2.88.4", "catalog": str(cat)},
                        "dev2": {"device_type": PAIR.device_type, "version": "2.88.4", "catalog": str(cat)}}}
    with pytest.raises(RolloutError, match=r"rollout r1 refused to start: .*genericx86-64-ext 2\.88\.4 -> 2\.113\.0.*missing.*devices dev1, dev2"):
        store.gate_rollout(spec, plan, {}, False, NOW)
    data, lines = store.gate_rollout(spec, plan, {}, True, NOW)
    assert data and not data["ok"] and lines[-1].endswith("(a real run refuses to start)")
    # a revert goes back to the release each device ran before: no evidence for the target asked
    assert store.gate_rollout(spec, plan, {}, False, NOW, "revert") == (None, [])
    assert any("dev9: pair not known (not read at the start" in line for line in lines)
    store.save(str(tmp_path / "ev"), record(pair, ended=iso_time(NOW - 60)))
    data, lines = store.gate_rollout(spec, plan, {"dev2": {"status": "committed"}}, False, NOW)
    assert data and data["ok"] and data["pairs"][0]["hosts"] == ["dev1"]
    assert store.gate_rollout({"require": False}, plan, {}, False, NOW) == (None, [])


def iso_time(epoch: float) -> float:
    assert iso(epoch)
    return epoch


def test_an_abort_is_never_gated(tmp_path: Path) -> None:
    plan = {"id": "r1", "target_version": "2.113.0", "fleet": ["dev1"]}
    assert store.gate_rollout({"require": True, "devices": {"dev1": {"error": "x"}}}, plan, {}, False, NOW, "abort") == (None, [])
