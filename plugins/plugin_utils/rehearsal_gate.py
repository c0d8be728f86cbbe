# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The rollout's gate on rehearsals (``hup_require_rehearsal``): the pure decision.

The rollout looks for a passing evidence record (:func:`.rehearsal.evidence_record`) of every
pair it is about to update (:func:`decide_gate`) and refuses to start when one is missing, failed,
too old or without a drill the requirement names (:func:`parse_requirement`).

Nothing here touches a file or a device (the evidence directory and the gate of the rollout's
start: :mod:`.rehearsal_store`).
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.rehearsal import Pair, RehearsalError, parse_drills
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import parse_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version

#: what the gate's result keeps of the record it relied on
RECORD_KEYS = ("pair_id", "devices", "run_id", "ended", "status", "reason")


@dataclass(frozen=True)
class Requirement:
    """``hup_require_rehearsal``: off, or on with a maximum age (seconds, None: any age) and the
    drills that must have passed besides the record's verdict."""

    required: bool = False
    max_age: int | None = None
    drills: tuple[str, ...] = ()

    def text(self) -> str:
        parts = ["a passing rehearsal"]
        if self.max_age is not None:
            parts.append(f"at most {duration_text(self.max_age)} old")
        if self.drills:
            parts.append(f"with drills {', '.join(self.drills)} passed")
        return " ".join(parts)


def duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s?)?\s*$")
_FALSE = {"", "false", "no", "off", "0", "n", "f"}
_TRUE = {"true", "yes", "on", "1", "y", "t"}


def _duration(value: t.Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _DURATION.match(value) if isinstance(value, str) and value.strip() else None
    if not match or not any(match.groups()):
        raise RehearsalError(f"{where}: true, false, a maximum age (e.g. 7d, 12h, 1d12h) or a mapping "
                             f"{{max_age, drills}}, got {value!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise RehearsalError(f"{where}: a maximum age above 0, got {value!r}")
    return total


def parse_requirement(raw: t.Any, where: str = "hup_require_rehearsal") -> Requirement:
    """``false`` (the default), ``true``, a maximum age (``7d``), or ``{max_age: 7d, drills: [health]}``."""
    if raw is None or raw is False:
        return Requirement()
    if raw is True:
        return Requirement(True)
    if isinstance(raw, str) and raw.strip().lower() in _FALSE:
        return Requirement()
    if isinstance(raw, str) and raw.strip().lower() in _TRUE:
        return Requirement(True)
    if isinstance(raw, Mapping):
        unknown = sorted(set(map(str, raw)) - {"max_age", "drills"})
        if unknown:
            raise RehearsalError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are max_age, drills")
        max_age = None if raw.get("max_age") in (None, "") else _duration(raw["max_age"], f"{where}.max_age")
        drills = tuple(parse_drills(raw["drills"], f"{where}.drills")) if raw.get("drills") else ()
        return Requirement(True, max_age, drills)
    return Requirement(True, _duration(raw, where))


@dataclass
class PairStatus:
    pair: Pair
    hosts: list[str]
    status: str  # passed, missing, failed, stale, incomplete
    reason: str
    record: dict[str, t.Any] | None = None

    def line(self) -> str:
        hosts = ", ".join(self.hosts[:5]) + (", ..." if len(self.hosts) > 5 else "")
        return f"{self.pair.text()} for {len(self.hosts)} device(s) ({hosts}): {self.status}: {self.reason}"


@dataclass
class Gate:
    required: bool
    ok: bool
    pairs: list[PairStatus]
    unknown: dict[str, str]
    reason: str

    def lines(self) -> list[str]:
        out = [f"rehearsal evidence: {p.line()}" for p in self.pairs]
        out += [f"rehearsal evidence: {host}: pair not known ({why}); its update is not gated by this check"
                for host, why in sorted(self.unknown.items())]
        return out

    def as_dict(self) -> dict[str, t.Any]:
        return {"required": self.required, "ok": self.ok, "reason": self.reason, "unknown": self.unknown,
                "pairs": [{"pair": p.pair.as_dict(), "hosts": p.hosts, "status": p.status, "reason": p.reason,
                           "record": (p.record or {}).get("ended") and {k: p.record.get(k) for k in RECORD_KEYS}}
                          for p in self.pairs]}


def needed_pairs(devices: Mapping[str, Mapping[str, t.Any]], target_version: str,
                 digests: Mapping[str, str | None]) -> tuple[dict[Pair, list[str]], dict[str, str]]:
    """The pairs the rollout is about to update: device -> (its type, the version it runs); those
    that already run the target need none. ``digests``: device -> the target's catalog digest in the
    device's catalog (None: the catalog has no such release). Returns pair -> devices, and device ->
    why its pair is not known."""
    pairs: dict[Pair, list[str]] = {}
    unknown: dict[str, str] = {}
    for host in sorted(devices):
        info = devices[host] or {}
        if info.get("error"):
            unknown[host] = str(info["error"])
            continue
        device_type, version = info.get("device_type"), info.get("version")
        if not device_type or not version:
            unknown[host] = "its device type and version were not read"
            continue
        if same_version(str(version), target_version):
            continue
        digest = digests.get(host)
        if not digest:
            unknown[host] = f"the catalog has no release {target_version} for {device_type}"
            continue
        pairs.setdefault(Pair(str(device_type), str(version), target_version, digest), []).append(host)
    return pairs, unknown


def _ended(record: Mapping[str, t.Any]) -> float:
    try:
        return parse_iso(str(record.get("ended"))) or 0.0
    except (TypeError, ValueError):
        return 0.0


def pair_status(pair: Pair, hosts: list[str], records: Sequence[Mapping[str, t.Any]], req: Requirement, now: float) -> PairStatus:
    """The newest rehearsal run of ``pair`` decides: it passes when every record of that run passed
    (a run on two bench devices, one failing, fails), it is young enough and the required drills passed."""
    mine = [r for r in records if isinstance(r.get("pair"), Mapping) and _pair_or_none(r["pair"]) is not None
            and Pair.of(r["pair"]).matches(pair)]
    if not mine:
        return PairStatus(pair, hosts, "missing", "no rehearsal record (run osfleet.hup.rehearse for this pair)")
    newest = max(mine, key=_ended)
    run = [r for r in mine if r.get("run_id") == newest.get("run_id")]
    bad = [r for r in run if r.get("status") != "passed"]
    if bad:
        return PairStatus(pair, hosts, "failed", f"the newest rehearsal ({newest.get('run_id')}, {newest.get('ended')}) failed on "
                          f"{', '.join(_devices(r) for r in bad)}: {bad[0].get('reason')}", dict(bad[0]))
    age = now - _ended(newest)
    if req.max_age is not None and age > req.max_age:
        return PairStatus(pair, hosts, "stale", f"the newest rehearsal ({newest.get('ended')}) is {duration_text(int(age))} old, "
                          f"more than {duration_text(req.max_age)}", dict(newest))
    for drill in req.drills:
        if not all(any(d.get("name") == drill and d.get("outcome") == "passed" for d in r.get("drills") or []) for r in run):
            return PairStatus(pair, hosts, "incomplete", f"the drill {drill} did not pass in the newest rehearsal ({newest.get('run_id')})",
                              dict(newest))
    return PairStatus(pair, hosts, "passed", f"rehearsed by {newest.get('run_id')} on {', '.join(sorted(_devices(r) for r in run))} "
                      f"({newest.get('ended')}): {newest.get('reason')}", dict(newest))


def _devices(record: Mapping[str, t.Any]) -> str:
    return ", ".join(str(d) for d in record.get("devices") or []) or "?"


def _pair_or_none(raw: Mapping[str, t.Any]) -> Pair | None:
    try:
        return Pair.of(raw)
    except RehearsalError:
        return None


def decide_gate(req: Requirement, devices: Mapping[str, Mapping[str, t.Any]], target_version: str, digests: Mapping[str, str | None],
                records: Sequence[Mapping[str, t.Any]], now: float, started: bool = False) -> Gate:
    """Which pairs the rollout needs and which have evidence; ``ok`` False (required and a pair
    without a passing record) refuses the rollout's start. Once a wave ``started``, evidence that
    only grew older than ``max_age`` meanwhile is taken (the rollout goes on); a missing or a
    failed one still refuses the run."""
    pairs, unknown = needed_pairs(devices, target_version, digests)
    statuses = [pair_status(p, hosts, records, req, now) for p, hosts in sorted(pairs.items(), key=lambda i: i[0].text())]
    lacking = [s for s in statuses if s.status != "passed" and not (started and s.status == "stale")]
    if not req.required:
        return Gate(False, True, statuses, unknown, "no rehearsal required (hup_require_rehearsal)")
    if lacking:
        reason = ("the rollout requires " + req.text() + " for every pair it updates; without one: "
                  + "; ".join(f"{s.pair.text()} ({s.status}: {s.reason}; devices {', '.join(s.hosts[:5])}{', ...' if len(s.hosts) > 5 else ''})"
                              for s in lacking))
        return Gate(True, False, statuses, unknown, reason)
    return Gate(True, True, statuses, unknown, f"every pair has {req.text()} ({len(statuses)} pair(s))")
