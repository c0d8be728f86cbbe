# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Rehearsals (playbook osfleet.hup.rehearse): the pure decisions of the drills and their evidence.

A rehearsal proves, on a bench device, the safety nets of one *pair*: (device type, the version
the fleet runs, the target version, the catalog digest of the target release). It runs the
drills of :data:`DRILLS` and writes an *evidence record* (:func:`evidence_record`); the rollout
started with ``hup_require_rehearsal`` looks for a passing record of every pair it is about to
update (:func:`.rehearsal_gate.decide_gate`) and refuses to start when one is missing.

Each drill ends ``passed``, ``failed`` or ``not_run`` (:data:`OUTCOMES`), with a reason when it is
not passed: a drill that needs a command the device lacks (a power cut with no power-cut command)
is ``not_run``, never ``passed``. A record passes when no drill failed and the plain update
passed; the drills not run are listed with it, and the gate can require some of them
(``hup_require_rehearsal: {drills: [...]}``).

Nothing here touches a file or a device (the evidence directory: :mod:`.rehearsal_store`; the
record as Markdown and HTML: :mod:`.rehearsal_render`).
"""

from __future__ import annotations

import hashlib
import json
import re
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, OsfleetError
from ansible_collections.osfleet.hup.plugins.plugin_utils.method import METHOD_TAKEOVER, MethodChoice, choose_method
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version

SCHEMA = 1
OUTCOMES = ("passed", "failed", "not_run")
#: the drills in the order a rehearsal runs them: name -> what it proves
DRILLS: dict[str, str] = {
    "update": "the plain update commits the target, and a second run changes nothing",
    "health": "a health failure after the switch is rolled back to the old OS",
    "boot": "an unbootable new root falls back to the old OS (altboot)",
    "power_write": "a power cut during the write of the new root leaves a booting device, data intact; a rerun completes",
    "power_bootfiles": "a power cut during the boot files leaves a booting device, data intact; a rerun completes",
    "controller_killed": "the controller killed mid-update, a rerun completes",
    "link_cut": "the link to the device cut mid-update then restored, the update (or a rerun) completes",
    "advanced_staged": "the advanced update (takeover) interrupted before the disk write leaves the old OS intact, data too; a rerun completes",
}
#: the per-device commands (hup_rehearsal_commands keys) each drill needs
NEEDS: dict[str, tuple[str, ...]] = {
    "update": (),
    "health": ("health_fault", "fault_clear"),
    "boot": ("boot_fault", "fault_clear"),
    "power_write": ("power_cut", "power_on"),
    "power_bootfiles": ("power_cut", "power_on"),
    "controller_killed": (),
    "link_cut": ("link_down", "link_up"),
    "advanced_staged": (),
}
COMMANDS = ("reflash", "power_cut", "power_on", "health_fault", "boot_fault", "fault_clear", "link_down", "link_up")
#: the drills that break the standard update (not run for a pair the advanced update updates)
STANDARD_ONLY = ("health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut")
#: the drills a quick rehearsal takes (hup_rehearsal_drills: cheap)
CHEAP = ("update", "health")
#: the drills that leave a device of a pair the standard update updates on the first version (rolled
#: back, fallen back, or not run: the advanced drill), so that the next drill on it needs no reflash
ENDS_ON_FIRST = ("health", "boot", "advanced_staged")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RehearsalError(OsfleetError):
    """A rehearsal or a gate that cannot be run as asked (bad requirement, unreadable record...)."""


# -- pairs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    device_type: str
    from_version: str
    to_version: str
    catalog_digest: str

    def text(self) -> str:
        return f"{self.device_type} {self.from_version} -> {self.to_version} (catalog {short_digest(self.catalog_digest)})"

    def as_dict(self) -> dict[str, str]:
        return {"device_type": self.device_type, "from_version": self.from_version, "to_version": self.to_version,
                "catalog_digest": self.catalog_digest}

    def file_id(self) -> str:
        """The pair as a file name: ``<type>_<from>_<to>_<12 hex of the digest>``."""
        name = f"{self.device_type}_{self.from_version}_{self.to_version}_{short_digest(self.catalog_digest)}"
        return _SAFE.sub("-", name)

    def matches(self, other: Pair) -> bool:
        return (self.device_type == other.device_type and self.catalog_digest == other.catalog_digest
                and same_version(self.from_version, other.from_version) and same_version(self.to_version, other.to_version))

    @classmethod
    def of(cls, raw: Mapping[str, t.Any]) -> Pair:
        try:
            return cls(str(raw["device_type"]), str(raw["from_version"]), str(raw["to_version"]), str(raw["catalog_digest"]))
        except KeyError as exc:
            raise RehearsalError(f"a rehearsal pair needs device_type, from_version, to_version and catalog_digest: {exc} missing") from None


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def catalog_digest(release_entry: Mapping[str, t.Any], registries: Mapping[str, t.Any] | None = None) -> str:
    """What a rehearsal proved of the catalog: the target release's entry (image digest, deltas,
    layout, supervisor; the tools' ``x-`` keys left out) and the registries it is pulled from. The
    same release republished with another image, delta or registry is another pair."""
    entry = {k: v for k, v in release_entry.items() if not str(k).startswith("x-")}
    text = json.dumps({"release": entry, "registries": dict(registries or {})}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- drills ----------------------------------------------------------------------------------------

def parse_drills(raw: t.Any, where: str = "hup_rehearsal_drills") -> list[str]:
    """``hup_rehearsal_drills``: ``all``, ``cheap``, or a list of drill names (run in :data:`DRILLS` order)."""
    if raw in (None, "", "all"):
        return list(DRILLS)
    if raw == "cheap":
        return list(CHEAP)
    if isinstance(raw, str):
        raw = [d.strip() for d in raw.split(",") if d.strip()]
    if not isinstance(raw, Sequence) or not raw:
        raise RehearsalError(f"{where}: all, cheap or a list of drills ({', '.join(DRILLS)}), got {raw!r}")
    unknown = [str(d) for d in raw if d not in DRILLS]
    if unknown:
        raise RehearsalError(f"{where}: unknown drill(s) {', '.join(unknown)}; the drills are {', '.join(DRILLS)}")
    return [d for d in DRILLS if d in raw]


def missing_commands(drill: str, commands: Mapping[str, t.Any] | Sequence[str]) -> str | None:
    """Why ``drill`` cannot run on a device with these commands (None: it can). ``commands`` is the
    device's hup_rehearsal_commands, or only their names when their values cannot be templated
    (roles/rehearse/tasks/bench.yml): each named command then counts as given, and the drill fails
    with the templating error when it runs."""
    if isinstance(commands, Mapping):
        lacking = [c for c in NEEDS[drill] if not str(commands.get(c) or "").strip()]
    else:
        lacking = [c for c in NEEDS[drill] if c not in {str(n) for n in commands}]
    if not lacking:
        return None
    return f"needs the device's {' and '.join(lacking)} command{'s' if len(lacking) > 1 else ''} (hup_rehearsal_commands), which it has not"


def assign_drills(benches: Mapping[str, Mapping[str, t.Any]], drills: t.Any) -> dict[str, t.Any]:
    """Which bench device runs which drill, and in which order, so that the drills of one rehearsal
    run in parallel and as few as can be start with a reflash.

    ``benches``: device -> its ``device_type`` and ``commands`` (hup_rehearsal_commands, or their
    names alone when they cannot be templated: :func:`missing_commands`). Each
    device type gets every drill of ``drills`` (:func:`parse_drills`), spread over its devices,
    among those that have the drill's commands (all of them when none has: the drill is then
    reported not run there, never skipped silently); the drills only some devices can run are
    placed first. A drill that ends on the target (the update, the interruptions: the next drill
    of its device must bring it back to the first version, a reflash) goes to the device with the
    fewest such drills, then the fewest drills; a drill that leaves the device on the first
    version (:data:`ENDS_ON_FIRST`) to the device with the fewest drills. Ties by name. A device
    runs its drills that end on the first version first. Returns ``hosts`` (device -> its drills,
    in the order it runs them), ``types`` (device type -> its devices) and ``drills`` (the
    drills, in :data:`DRILLS` order)."""
    wanted = parse_drills(drills)
    types: dict[str, list[str]] = {}
    for host in sorted(benches):
        device_type = str((benches[host] or {}).get("device_type") or "")
        if not device_type:
            raise RehearsalError(f"bench device {host}: its device type is not known")
        types.setdefault(device_type, []).append(host)
    hosts: dict[str, list[str]] = {host: [] for host in sorted(benches)}

    def to_target(host: str) -> int:
        return len([d for d in hosts[host] if d not in ENDS_ON_FIRST])

    for members in types.values():
        able = {d: [h for h in members if missing_commands(d, (benches[h] or {}).get("commands") or {}) is None] or members
                for d in wanted}
        # the drills only some devices can run are placed first, then those that end on the target
        for drill in sorted(wanted, key=lambda d: (len(able[d]) == len(members), d in ENDS_ON_FIRST, wanted.index(d))):
            if drill in ENDS_ON_FIRST:
                chosen = min(able[drill], key=lambda h: (len(hosts[h]), h))
            else:
                chosen = min(able[drill], key=lambda h: (to_target(h), len(hosts[h]), h))
            hosts[chosen].append(drill)
    return {"hosts": {h: sorted(mine, key=lambda d: (d not in ENDS_ON_FIRST, wanted.index(d))) for h, mine in hosts.items()},
            "types": types, "drills": wanted}


@dataclass
class DrillResult:
    name: str
    outcome: str
    reason: str = ""
    duration: float = 0.0
    details: dict[str, t.Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in DRILLS:
            raise RehearsalError(f"unknown drill {self.name!r}")
        if self.outcome not in OUTCOMES:
            raise RehearsalError(f"drill {self.name}: outcome {self.outcome!r} is none of {', '.join(OUTCOMES)}")
        if self.outcome != "passed" and not self.reason:
            raise RehearsalError(f"drill {self.name}: a drill {self.outcome.replace('_', ' ')} needs its reason")

    def as_dict(self) -> dict[str, t.Any]:
        return {"name": self.name, "outcome": self.outcome, "reason": self.reason, "duration": round(self.duration, 1),
                "proves": DRILLS[self.name], "details": self.details}


def not_run(name: str, reason: str) -> DrillResult:
    return DrillResult(name, "not_run", reason)


def standard_only_reason(name: str, why: str = "") -> str:
    """Why the drill ``name`` (of :data:`STANDARD_ONLY`) is not run for a pair the takeover updates."""
    return (f"the pair updates with the advanced update (takeover{': ' + why if why else ''}), and the drill {name} breaks the "
            "standard update (it has no rollback, no root partition written beside the old one); the advanced update's drill "
            "is advanced_staged")


def pair_method(cat: Catalog, device_type: str, from_version: str, to_version: str) -> MethodChoice | None:
    """The method that updates the pair as the catalog describes it (the two releases' partition
    layouts and architectures, the device type's takeover version: what preflight decides for a
    device on ``from_version``); None when the catalog lacks one of the releases."""
    try:
        first, target = cat.release(device_type, from_version), cat.release(device_type, to_version)
        entry = cat.device_type(device_type)
    except CatalogError:
        return None
    return choose_method(device_type, first.version, target.version, min_takeover_version=entry.get("min_takeover_version"),
                         current_layout=first.layout, target_layout=target.layout, current_arch=first.arch, target_arch=target.arch)


def not_applicable(name: str, choice: MethodChoice | None) -> str | None:
    """Why the drill ``name`` is not run for a pair of method ``choice`` (:func:`pair_method`),
    decided before the drill touches its device; None: it runs (also when the catalog could not
    tell, or refuses the pair: the drill's update runs say why). A takeover pair runs no drill of
    :data:`STANDARD_ONLY` (each would bring the device back to the first version and take it over
    to judge nothing), a pair of the standard update no ``advanced_staged``."""
    if choice is None or choice.method is None:
        return None
    if choice.method == METHOD_TAKEOVER and name in STANDARD_ONLY:
        return standard_only_reason(name, choice.reason)
    if choice.method != METHOD_TAKEOVER and name == "advanced_staged":
        return f"the pair updates with {choice.method}, not the advanced update (takeover): {choice.reason}"
    return None


#: what an SSH error says when waiting for the device cannot help (lower case) -> why
_HOST_KEY = ("the device's SSH host key is not the one known_hosts pins (a reflash or a takeover gives a device another key: "
             "pin the one it has now)")
_LASTING = (
    ("host key verification failed", _HOST_KEY),
    ("remote host identification has changed", _HOST_KEY),
)


def lasting_connection_failure(text: str) -> str | None:
    """Why the connection error ``text`` will not go away by waiting (the drill then fails at once,
    naming it, instead of waiting out its settle timeout), or None (a device still booting, a cut
    link: retried)."""
    low = text.lower()
    for needle, why in _LASTING:
        if needle in low:
            return f"{why}; waiting does not change that"
    return None


# -- a bench device that stopped answering ---------------------------------------------------------
#: how a drill reads its device when it starts (:func:`first_read`)
READ_WAIT, READ_ONCE, READ_REFLASH = "wait", "once", "reflash"


def down_note(run_id: str, drill: str, reason: str, at: float) -> dict[str, t.Any]:
    """What is known of a bench device that did not answer within the settle timeout (or whose
    power_on command failed) in the drill ``drill`` of the rehearsal ``run_id``: the next reads of
    it in this rehearsal try once, instead of waiting out the settle timeout again."""
    return {"run_id": run_id, "drill": drill, "reason": reason, "at": iso(at)}


def known_down(note: Mapping[str, t.Any] | None, run_id: str) -> Mapping[str, t.Any] | None:
    """``note`` (:func:`down_note`) when it is of this rehearsal (an earlier one's says nothing now)."""
    if isinstance(note, Mapping) and note.get("run_id") == run_id and note.get("drill") in DRILLS and note.get("reason"):
        return note
    return None


def first_read(note: Mapping[str, t.Any] | None, reflash: bool) -> str:
    """How a drill reads its device before it starts: a device known not to answer (``note``) is
    reflashed at once when the device has a reflash command (that may bring it back; the read after
    the reflash waits), else tried once; any other is waited for (it may still be booting)."""
    if note is None:
        return READ_WAIT
    return READ_REFLASH if reflash else READ_ONCE


def not_waited(device: str, note: Mapping[str, t.Any], error: str) -> str:
    """Why a read of a device known not to answer failed at once (the drill's reason)."""
    return (f"{device} is known not to answer (drill {note['drill']}, {note.get('at') or '?'}: {note['reason']}); "
            f"tried once, not waited for again: {error}")


@dataclass(frozen=True)
class Observed:
    """What a drill saw of the device: the version it runs (committed or not), whether it answered,
    whether the data on /mnt/data is as before, the update runs' exit codes and changed counts."""

    version: str | None = None
    committed: bool | None = None
    reachable: bool = True
    data_intact: bool | None = None
    rcs: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()
    interrupted: bool | None = None
    #: the rollback the update run reported (its reason: health, altboot, checks), "" none
    rolled_back: str | None = None
    #: what the device ran between the interruption and the rerun (None: not read)
    between: str | None = None
    #: the update's method as its runs printed it (balenahup, takeover; None: not known)
    method: str | None = None


def judge_drill(name: str, from_version: str, to_version: str, obs: Observed, duration: float = 0.0,
                details: Mapping[str, t.Any] | None = None) -> DrillResult:
    """A drill's outcome from what it observed.

    - ``update``: two runs, both exit 0, the second with no change; the device runs the target, committed.
    - ``health`` / ``boot``: the update run fails reporting a rollback, and the device runs the old version again.
    - ``power_*``, ``controller_killed``, ``link_cut``: the interruption hit (``interrupted``); the
      device answered after it, its data intact (power cuts); the last run exits 0 and the device
      runs the target, committed.
    - ``advanced_staged``: as those, and between the interruption and the rerun the device ran the
      old version (its data intact: the drill checks it then, the takeover's rerun keeps only what
      it keeps)."""
    extra = dict(details or {})
    on_target = obs.version is not None and same_version(obs.version, to_version)
    on_old = obs.version is not None and same_version(obs.version, from_version)

    def result(reason: str = "") -> DrillResult:
        return DrillResult(name, "failed" if reason else "passed", reason, duration, extra)

    if not obs.reachable:
        return result("the device did not answer after the drill")
    takeover = obs.method == "takeover"
    if takeover and name in STANDARD_ONLY:
        return DrillResult(name, "not_run", standard_only_reason(name), duration, extra)
    # a takeover rewrites the whole disk: /mnt/data is not kept (hup_allow_data_loss), only the files it keeps
    if obs.data_intact is False and not (takeover and name == "update"):
        return result("the data on /mnt/data changed")
    if name == "update":
        if len(obs.rcs) < 2 or obs.rcs[0] != 0:
            return result(f"the update run failed (exit {obs.rcs[0] if obs.rcs else '?'})")
        if obs.rcs[1] != 0:
            return result(f"the second run failed (exit {obs.rcs[1]})")
        if len(obs.changed) > 1 and obs.changed[1]:
            return result(f"the second run changed {obs.changed[1]} task(s), not 0")
        if not on_target or obs.committed is False:
            return result(f"the device runs {obs.version or '?'}{'' if obs.committed else ' (not committed)'}, not {to_version} committed")
        return result()
    if name in ("health", "boot"):
        what = "health failure" if name == "health" else "unbootable new root"
        if obs.rcs and obs.rcs[0] == 0:
            return result(f"the update succeeded despite the {what}: the fault did not take")
        if not on_old:
            return result(f"after the {what} the device runs {obs.version or '?'}, not {from_version}: it was not rolled back"
                          + (" (the new OS's rollback never triggered)" if on_target else ""))
        if obs.rolled_back == "":
            return result(f"the update run failed (exit {obs.rcs[0] if obs.rcs else '?'}) without reporting a rollback: "
                          f"the {what} was not what stopped it")
        return result()
    if obs.interrupted is False:
        return result("the interruption never hit (the update ended before it)")
    if name == "advanced_staged" and not (obs.between is not None and same_version(obs.between, from_version)):
        return result(f"after the interruption before the disk write the device ran {obs.between or '?'}, not {from_version}: "
                      "the old OS was not left intact")
    if not obs.rcs or obs.rcs[-1] != 0:
        return result(f"the run after the interruption failed (exit {obs.rcs[-1] if obs.rcs else '?'})")
    if not on_target or obs.committed is False:
        return result(f"after the rerun the device runs {obs.version or '?'}, not {to_version} committed")
    return result()


# -- evidence --------------------------------------------------------------------------------------

def verdict(drills: Sequence[Mapping[str, t.Any]]) -> tuple[str, str]:
    """The record's verdict (``passed`` or ``failed``) and why."""
    failed = [d["name"] for d in drills if d["outcome"] == "failed"]
    skipped = [d["name"] for d in drills if d["outcome"] == "not_run"]
    passed = [d["name"] for d in drills if d["outcome"] == "passed"]
    if failed:
        return "failed", f"drill(s) failed: {', '.join(failed)}"
    if "update" not in passed:
        return "failed", "the plain update drill did not pass" + (" (not run)" if "update" in skipped else "")
    return "passed", f"{len(passed)} drill(s) passed" + (f"; not run: {', '.join(skipped)}" if skipped else "")


def evidence_record(*, pair: Pair, devices: Sequence[str], method: str, image_digests: Mapping[str, t.Any], collection_version: str,
                    drills: Sequence[Mapping[str, t.Any]], run_id: str, started: float, ended: float, operator: str,
                    logs: Mapping[str, t.Any] | None = None) -> dict[str, t.Any]:
    status, reason = verdict(drills)
    return {
        "schema": SCHEMA, "kind": "osfleet.hup.rehearsal", "pair": pair.as_dict(), "pair_id": pair.file_id(),
        "devices": sorted(set(devices)), "method": method, "image_digests": dict(image_digests), "collection_version": collection_version,
        "run_id": run_id, "started": iso(started), "ended": iso(ended), "operator": operator,
        "status": status, "reason": reason, "drills": [dict(d) for d in drills], "logs": dict(logs or {}),
    }
