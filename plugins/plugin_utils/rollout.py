# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Canary rollouts (playbook osfleet.hup.rollout, module osfleet.hup.rollout): the pure decisions.

Nothing here touches a file or a device: the waves as the operator declares them
(:func:`parse_waves`), the frozen membership (:func:`assign`, a stable hash of the device name fills
the percentage waves), the failure limits as counts (:func:`allowed`, "halts at the 2nd
failure"), the digest of the spec (:func:`spec_digest`), a wave's verdict from the device records
(:func:`judge`) and what a wave slot of a run does (:func:`decide_slot`). The state directory is
:mod:`.rollout_store`.

A device record's ``status`` is one of :data:`STATUSES`:

- ``pending``: planned, never tried (no record yet);
- ``in_progress``: written before the device's first change; a run that ends it (killed controller)
  leaves it so, and the next run resumes the device with the same run id;
- ``committed``: the target booted and committed after the health check (``current``: it already
  ran the target, committed);
- ``failed``: failed, rolled back, refused by the preflight, unreachable after a change, or fallen
  back at the bake re-check;
- ``deferred``: unreachable before any change (or its update lock held by another run): retried by
  every later run, never silently dropped.

``hup_rollout_action=revert`` (the committed devices back to the release each ran before) is
:mod:`.rollout_revert`; the approvals of gated waves (``hup_rollout_approve``) are
:mod:`.rollout_approval`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import OsfleetError
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso

#: how many waves a rollout can have (the playbook has one slot of plays per wave)
WAVE_SLOTS = 8
STATUSES = ("pending", "in_progress", "committed", "current", "failed", "deferred")
DONE = ("committed", "current")
WAVE_KEYS = ("name", "hosts", "percent", "max_failures", "min_devices", "bake", "approval", "max_concurrent", "max_deferred")
ACTIONS = ("run", "plan", "resume", "retry_failed", "abort", "replan", "revert")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s?)?\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class RolloutError(OsfleetError):
    """A rollout that cannot be planned or driven as asked (bad spec, changed spec, lock held...)."""


@dataclass(frozen=True)
class Limit:
    """A count, or a percentage of the wave's devices (``percent`` True)."""

    value: float
    percent: bool = False

    def text(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


@dataclass(frozen=True)
class WaveSpec:
    name: str
    hosts: str | None = None
    percent: float | None = None
    max_failures: Limit = Limit(0)
    min_devices: int = 1
    bake: int = 0
    approval: bool = False
    max_concurrent: Limit | None = None
    max_deferred: Limit = Limit(0)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def parse_duration(value: t.Any, where: str) -> int:
    """Seconds from ``90``, ``"45s"``, ``"30m"``, ``"2h"``, ``"1d"`` or ``"1h30m"``."""
    if isinstance(value, bool):
        raise RolloutError(f"{where}: a duration, not a boolean: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise RolloutError(f"{where}: a duration cannot be negative: {value}")
        return value
    match = _DURATION.match(str(value)) if isinstance(value, str) and value.strip() else None
    if not match:
        raise RolloutError(f"{where}: not a duration (seconds, or e.g. 45s, 30m, 2h, 1d, 1h30m): {value!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_limit(value: t.Any, where: str, *, minimum: int = 0) -> Limit:
    """A count (``2``) or a percentage (``"5%"``) of a wave's devices."""
    if isinstance(value, bool):
        raise RolloutError(f"{where}: a count or a percentage (e.g. 2 or \"5%\"), not a boolean")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        count = int(value)
        if count < minimum:
            raise RolloutError(f"{where}: at least {minimum}: {value!r}")
        return Limit(count)
    match = _PERCENT.match(value) if isinstance(value, str) else None
    if not match or not 0 <= float(match.group(1)) <= 100:
        raise RolloutError(f"{where}: a count or a percentage from 0% to 100% (e.g. 2 or \"5%\"): {value!r}")
    if minimum and float(match.group(1)) == 0:
        raise RolloutError(f"{where}: more than 0%: {value!r}")
    return Limit(float(match.group(1)), percent=True)


def parse_waves(raw: t.Any) -> list[WaveSpec]:
    """The operator's ``hup_waves``, checked: every error names the wave (index and name) and the key."""
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not raw:
        raise RolloutError("hup_waves: a non-empty list of waves (each with a name and hosts or percent)")
    if len(raw) > WAVE_SLOTS:
        raise RolloutError(f"hup_waves: at most {WAVE_SLOTS} waves, got {len(raw)}")
    waves: list[WaveSpec] = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, Mapping) else None
        where = f"hup_waves[{index}]" + (f" ({name})" if isinstance(name, str) else "")
        if not isinstance(item, Mapping):
            raise RolloutError(f"{where}: a mapping (name, hosts or percent, max_failures, ...), got {type(item).__name__}")
        unknown = sorted(set(map(str, item)) - set(WAVE_KEYS))
        if unknown:
            raise RolloutError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(WAVE_KEYS)}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RolloutError(f"{where}: name: letters, digits, '_' and '-' (up to 63), got {name!r}")
        if any(w.name == name for w in waves):
            raise RolloutError(f"{where}: name: the wave {name} is declared twice")
        hosts, percent = item.get("hosts"), item.get("percent")
        if (hosts is None) == (percent is None):
            raise RolloutError(f"{where}: give either hosts (an inventory pattern) or percent (of the devices left)")
        if hosts is not None and (not isinstance(hosts, str) or not hosts.strip()):
            raise RolloutError(f"{where}: hosts: an inventory pattern (a string), got {hosts!r}")
        if percent is not None:
            if isinstance(percent, str):
                percent = percent.strip().rstrip("%").strip()
            try:
                percent = float(percent)
            except (TypeError, ValueError):
                raise RolloutError(f"{where}: percent: a number from 1 to 100, got {item.get('percent')!r}") from None
            if not 0 < percent <= 100:
                raise RolloutError(f"{where}: percent: a number above 0 and at most 100, got {item.get('percent')!r}")
        min_devices = item.get("min_devices", 1)
        if isinstance(min_devices, bool) or not isinstance(min_devices, int) or min_devices < 1:
            raise RolloutError(f"{where}: min_devices: a whole number of at least 1, got {min_devices!r}")
        approval = item.get("approval", False)
        if not isinstance(approval, bool):
            raise RolloutError(f"{where}: approval: true or false, got {approval!r}")
        waves.append(WaveSpec(
            name=name, hosts=hosts, percent=percent,
            max_failures=parse_limit(item.get("max_failures", 0), f"{where}: max_failures"),
            min_devices=min_devices,
            bake=parse_duration(item.get("bake", 0), f"{where}: bake"),
            approval=approval,
            max_concurrent=None if item.get("max_concurrent") is None else parse_limit(item["max_concurrent"], f"{where}: max_concurrent", minimum=1),
            max_deferred=parse_limit(item.get("max_deferred", 0), f"{where}: max_deferred"),
        ))
    return waves


def stable_key(host: str) -> str:
    """The order of the devices in the percentage waves: a hash of the name alone, so the same device
    is early in every rollout and adding a device never moves another."""
    return hashlib.sha256(host.encode("utf-8")).hexdigest()


def assign(waves: Sequence[WaveSpec], fleet: Sequence[str], pattern_hosts: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Wave name -> its devices, and the devices of ``fleet`` in no wave.

    The pattern waves take their hosts first (a device named by two, the first), in their order;
    then each percentage wave takes that share of the devices still left (rounded up, at least one
    when any is left), in the order of :func:`stable_key`."""
    members = set(fleet)
    taken: set[str] = set()
    out: dict[str, list[str]] = {w.name: [] for w in waves}
    for wave in waves:
        if wave.hosts is not None:
            mine = [h for h in pattern_hosts.get(wave.name, ()) if h in members and h not in taken]
            out[wave.name] = sorted(dict.fromkeys(mine))
            taken.update(mine)
    for wave in waves:
        if wave.percent is not None:
            rest = sorted((h for h in members if h not in taken), key=lambda h: (stable_key(h), h))
            count = min(len(rest), math.ceil(len(rest) * wave.percent / 100 - 1e-9)) if rest else 0
            out[wave.name] = sorted(rest[:count])
            taken.update(rest[:count])
    return out, sorted(members - taken)


def allowed(limit: Limit, devices: int) -> int:
    """How many failures (or deferred devices) a wave of ``devices`` takes before it halts."""
    if not limit.percent:
        return int(limit.value)
    return int(math.floor(devices * limit.value / 100 + 1e-9))


def limit_text(limit: Limit, devices: int, what: str = "failure") -> str:
    count = allowed(limit, devices)
    if count >= devices and devices:
        return f"never halts ({limit.text()} of {devices})"
    given = f" ({limit.text()} of {devices})" if limit.percent else ""
    return f"halts at the {ordinal(count + 1)} {what}{given}"


def serial_of(wave: WaveSpec, devices: int) -> int:
    """The batch size of the wave's play: max_concurrent as a count (all at once when unset)."""
    if wave.max_concurrent is None or devices == 0:
        return max(devices, 1)
    if wave.max_concurrent.percent:
        return max(1, math.ceil(devices * wave.max_concurrent.value / 100 - 1e-9))
    return max(1, min(devices, int(wave.max_concurrent.value)))


def spec_digest(target_version: str, waves: t.Any, fleet: Sequence[str]) -> str:
    """What the frozen plan stands for: the target, the waves as declared, the devices planned."""
    text = json.dumps({"target_version": target_version, "waves": waves, "fleet": sorted(fleet)}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def wave_dict(wave: WaveSpec, hosts: Sequence[str], order: int) -> dict[str, t.Any]:
    """A wave as the frozen plan holds it."""
    return {
        "name": wave.name, "order": order, "hosts": list(hosts), "pattern": wave.hosts, "percent": wave.percent,
        "max_failures": wave.max_failures.text(), "allowed_failures": allowed(wave.max_failures, len(hosts)),
        "limit": limit_text(wave.max_failures, len(hosts)), "min_devices": wave.min_devices,
        "max_deferred": wave.max_deferred.text(), "allowed_deferred": allowed(wave.max_deferred, len(hosts)),
        "bake": wave.bake, "approval": wave.approval, "serial": serial_of(wave, len(hosts)),
        "max_concurrent": None if wave.max_concurrent is None else wave.max_concurrent.text(),
        # a percentage limit is judged once this many devices of the wave are done (counts always)
        "judge_after": min(wave.min_devices, len(hosts)) if wave.max_failures.percent else 0,
    }


@dataclass
class Verdict:
    status: str  # running, passed, halted, inconclusive
    reason: str
    counts: dict[str, int] = field(default_factory=dict)


def counts_of(wave: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]]) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for host in wave["hosts"]:
        counts[str((records.get(host) or {}).get("status") or "pending")] += 1
    return counts


def judge(wave: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]], acknowledged: int = 0) -> Verdict:
    """The wave's verdict from its device records. ``acknowledged``: failures the operator resumed past.

    Halted when the failures (beyond the acknowledged ones) exceed the wave's limit (a percentage
    limit only once ``judge_after`` devices are done); running while devices are left; inconclusive
    when more devices are deferred than ``allowed_deferred``; passed otherwise."""
    counts = counts_of(wave, records)
    failed = counts["failed"] - acknowledged
    done = counts["committed"] + counts["current"] + counts["failed"]
    limit = int(wave["allowed_failures"])
    judged = done >= int(wave.get("judge_after") or 0)
    name = wave["name"]
    if judged and failed > limit:
        failed_hosts = sorted(h for h in wave["hosts"] if (records.get(h) or {}).get("status") == "failed")
        return Verdict("halted", f"wave {name}: {counts['failed']} failed ({', '.join(failed_hosts)})"
                       f"{f', {acknowledged} of them resumed past' if acknowledged else ''} > limit {limit} "
                       f"({wave['limit']}): the rollout halted; no device of a later wave was touched", counts)
    if counts["pending"] or counts["in_progress"]:
        return Verdict("running", f"wave {name}: {counts['pending'] + counts['in_progress']} device(s) left", counts)
    if counts["deferred"] > int(wave["allowed_deferred"]):
        deferred = sorted(h for h in wave["hosts"] if (records.get(h) or {}).get("status") == "deferred")
        return Verdict("inconclusive", f"wave {name}: {counts['deferred']} device(s) deferred ({', '.join(deferred)}: "
                       f"unreachable before any change) > limit {wave['allowed_deferred']}: the rollout paused; "
                       "run it again when they are back (they are retried), no later wave starts before", counts)
    return Verdict("passed", f"wave {name}: {counts['committed'] + counts['current']} done, {counts['failed']} failed "
                   f"(limit {limit}), {counts['deferred']} deferred", counts)


def wave_decision(wave: Mapping[str, t.Any], mine: Mapping[str, t.Any], waiting: str | None = None) -> str:
    """A wave's decision as the report gives it beside the wave's counts (which the report counts
    itself from the devices): the verdict without its counts, or why the wave stopped, without
    the ``wave NAME:`` the report already prints. ``waiting`` is why the rollout waits, when it
    does: a wave not started that waits for its approval says so."""
    status = str(mine.get("status") or "pending")
    name = wave["name"]
    if status == "pending" or not mine:
        prefix = f"wave {name} "
        if waiting and waiting.startswith(prefix + "waits for approval"):
            return waiting[len(prefix):]
        return "not started"
    if status in ("passed", "baked"):
        return ("passed, re-checked after its bake" if status == "baked" else "passed") + f" ({wave['limit']})"
    if status == "baking" and mine.get("bake_until"):
        return f"passed ({wave['limit']}); bakes until {iso(float(mine['bake_until']))}"
    reason = str(mine.get("reason") or status)
    for prefix in (f"wave {name}: ", f"wave {name} "):
        if reason.startswith(prefix):
            return reason[len(prefix):]
    return reason


@dataclass
class SlotDecision:
    """What one wave slot of a run does: ``mode`` update (``hosts``), bake_check (``hosts``), skip
    (the wave is done, or there is no such wave) or stop (a gate: ``gate`` bake, approval, halted,
    paused, aborted; ``reason``)."""

    mode: str
    wave: str | None = None
    hosts: list[str] = field(default_factory=list)
    gate: str | None = None
    reason: str = ""
    serial: int = 1


def to_run(wave: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]], retry_failed: bool) -> list[str]:
    """The wave's devices a run updates: never tried, in progress (resumed), deferred (retried), and
    the failed ones when the operator asks to retry them."""
    wanted = {"pending", "in_progress", "deferred"} | ({"failed"} if retry_failed else set())
    return [h for h in wave["hosts"] if str((records.get(h) or {}).get("status") or "pending") in wanted]


def not_done_reason(wave: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]], run: str | None) -> str:
    """Why a wave the judge finds still running stops the rollout: its devices this run left in
    progress (lost after their first change: unreachable to Ansible, whose rescue does not run for
    such a device, or their play stopped), whose state is not known, and those it did not update."""
    left = to_run(wave, records, False)
    lost = [h for h in left if str((records.get(h) or {}).get("status")) == "in_progress" and run and (records.get(h) or {}).get("run") == run]
    rest = [h for h in left if h not in lost]
    parts = []
    if lost:
        parts.append(f"{', '.join(lost)} lost during this run's change of {'it' if len(lost) == 1 else 'them'} (unreachable after the first "
                     f"change, or the play stopped): the state is not known; the next run resumes {'it' if len(lost) == 1 else 'them'}")
    if rest:
        parts.append(f"{', '.join(rest)} not updated in this run (outside --limit, or the play stopped)")
    return f"wave {wave['name']} is not done: {'; '.join(parts)}; no later wave starts before"


def decide_slot(plan: Mapping[str, t.Any], state: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]],
                index: int, action: str, now: float, approvals: Mapping[str, Mapping[str, t.Any]]) -> SlotDecision:
    """Slot ``index`` of this run: the wave it drives, or why the run stops there."""
    waves = plan["waves"]
    if index >= len(waves):
        return SlotDecision("skip", reason="no such wave")
    wave = waves[index]
    name = wave["name"]
    mine = (state.get("waves") or {}).get(name) or {}
    status = mine.get("status", "pending")
    if state.get("status") == "aborted":
        return SlotDecision("stop", name, gate="aborted", reason=f"the rollout was aborted: {state.get('reason', '')}".rstrip(": "))
    if status == "halted" and action not in ("resume", "retry_failed"):
        return SlotDecision("stop", name, gate="halted", reason=f"{mine.get('reason') or f'wave {name} halted'}; "
                            "run with hup_rollout_action=resume (go on) or retry_failed (retry its failed devices) after fixing the cause")
    if status in ("passed", "baking") and wave["bake"]:
        until = float(mine.get("bake_until") or 0)
        if now < until:
            return SlotDecision("stop", name, gate="bake", reason=f"wave {name} bakes until {iso(until)} "
                                f"({int(until - now)} s left); run again then")
        hosts = [h for h in wave["hosts"] if (records.get(h) or {}).get("status") == "committed"]
        return SlotDecision("bake_check", name, hosts=hosts, reason=f"wave {name}: bake over, re-checking {len(hosts)} device(s)",
                            serial=max(1, len(hosts)))
    retry = action == "retry_failed"
    hosts = to_run(wave, records, retry)
    if status in ("passed", "baked") and not hosts:
        return SlotDecision("skip", name, reason=f"wave {name} is done")
    if wave["approval"]:
        given = approvals.get(name) or {}
        if given.get("digest") != plan["digest"]:
            return SlotDecision("stop", name, gate="approval", reason=f"wave {name} waits for approval: run with "
                                f"-e hup_rollout_approve={name}" + (" (its approval was for an earlier plan)" if given else ""))
    return SlotDecision("update", name, hosts=hosts, serial=int(wave["serial"]),
                        reason=f"wave {name}: {len(hosts)} device(s) to update")


def record_status(outcome: str) -> str:
    """A device's record status from what its update ended with (the standard role's run log outcome)."""
    if outcome in ("committed", "current"):
        return outcome
    if outcome in ("deferred",):
        return "deferred"
    return "failed"
