# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A rehearsal's evidence record, as plugin_utils.rehearsal writes it, for the tests of the drills,
the gate, the pages and the store."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh

NOW = 1_800_000_000.0
DIGEST = "sha256:" + "ab" * 32
PAIR = rh.Pair("genericx86-64-ext", "2.88.4", "2.113.0", DIGEST)


def record(pair: rh.Pair = PAIR, *, devices: tuple[str, ...] = ("bench1",), run_id: str = "r1", ended: float = NOW - 3600,
           outcomes: dict[str, str] | None = None) -> dict[str, t.Any]:
    outcomes = outcomes if outcomes is not None else {"update": "passed", "health": "passed"}
    drills = [rh.DrillResult(n, o, "" if o == "passed" else "why").as_dict() for n, o in outcomes.items()]
    return rh.evidence_record(pair=pair, devices=devices, method="standard", image_digests={"target": DIGEST}, collection_version="0.1.0",
                              drills=drills, run_id=run_id, started=ended - 600, ended=ended, operator="op")
