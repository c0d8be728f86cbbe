# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The revert of a canary rollout (``hup_rollout_action=revert``): the pure decisions.

``hup_rollout_action=revert`` takes the committed devices back to the release each ran before, in
the same waves, with the same limits and gates. A record keeps its revert apart, in its key
``revert`` (the update's record stays as it was), with a status of :data:`REVERT_STATUSES`:
``in_progress``, ``reverted`` (booted and committed the old release), ``refused`` (the other root
partition no longer verifiably holds it: nothing changed on the device), ``failed``, ``deferred``.
The waves of a revert are judged by :func:`.rollout.judge` on a view (:func:`revert_view`) in which
``reverted`` counts as ``committed`` and ``refused`` as ``current``: a refused device is done and
not a failure (it was not touched and says nothing about the old release's health), so it never
halts a wave; the revert then ends incomplete and the run fails, naming it (:func:`revert_outcome`).
What a revert does on one device is :func:`decide_revert`.
The rest of the rollout (plan, waves, gates, verdicts) is :mod:`.rollout`.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils.bootcopy import previous_release_problem
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import allowed, limit_text, parse_limit

REVERT_STATUSES = ("in_progress", "reverted", "refused", "failed", "deferred")
#: a revert record's status as the wave verdicts see it (judge, decide_slot), and back
REVERT_VIEW = {"reverted": "committed", "refused": "current"}
REVERT_FROM_VIEW = {"committed": "reverted", "current": "refused"}


def revert_hosts(wave: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]]) -> list[str]:
    """The wave's devices a revert is about: those the rollout committed (``current`` ones ran the
    target before it, ``failed`` and never tried ones were not changed by it)."""
    return [h for h in wave["hosts"] if (records.get(h) or {}).get("status") == "committed"]


def revert_view(plan: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]]) -> tuple[dict[str, t.Any], dict[str, dict[str, t.Any]]]:
    """The plan and records as the revert's waves are judged: each wave with the devices the
    rollout committed (its limits counted on them) and each device's revert record, its status
    mapped by :data:`REVERT_VIEW`."""
    waves = []
    for wave in plan["waves"]:
        hosts = revert_hosts(wave, records)
        limit = parse_limit(wave["max_failures"], f"wave {wave['name']}: max_failures")
        deferred = parse_limit(wave.get("max_deferred") or 0, f"wave {wave['name']}: max_deferred")
        waves.append({**wave, "hosts": hosts, "allowed_failures": allowed(limit, len(hosts)), "limit": limit_text(limit, len(hosts)),
                      "allowed_deferred": allowed(deferred, len(hosts)),
                      "serial": min(int(wave["serial"]), max(1, len(hosts))),
                      "judge_after": min(int(wave.get("min_devices") or 1), len(hosts)) if limit.percent else 0})
    view: dict[str, dict[str, t.Any]] = {}
    for host, record in records.items():
        mine = record.get("revert")
        if isinstance(mine, Mapping):
            status = str(mine.get("status") or "pending")
            view[host] = {**mine, "status": REVERT_VIEW.get(status, status)}
    return {**plan, "waves": waves}, view


@dataclass(frozen=True)
class RevertStep:
    """What a revert does on one device: ``action`` switch (the old release's switch, reboot and
    health), commit (it booted the old release, not committed yet: health only), done (it runs the
    old release, committed) or refuse (``reason``: nothing is changed); ``version`` the release it
    goes back to."""

    action: str
    reason: str
    version: str = ""


def decide_revert(host: str, record: Mapping[str, t.Any], dev: Mapping[str, t.Any]) -> RevertStep:
    """The revert of ``host`` from its rollout record (the update's ``from_version`` and the
    identity of the release it ran before: ``from_image_id``, ``from_digest``, ``from_root``) and
    what the device reports now (device_info's ``device``). Pure."""
    old, new = str(record.get("from_version") or ""), str(record.get("to_version") or "")
    if record.get("status") != "committed" or not old or not new:
        return RevertStep("refuse", f"{host}: not revertible: the rollout did not commit it "
                          f"(status {record.get('status') or 'pending'}{'' if old else ', no from version recorded'})")
    env = dev.get("boot_env") or {}
    armed = bool(env.get("upgrade_available"))
    running, root = str(dev.get("version") or ""), str(dev.get("active_root") or "")
    from_root = str(record.get("from_root") or "")
    if running == old and (not from_root or root == from_root):
        if armed:
            return RevertStep("commit", f"{host}: booted {old} on {root}, not committed yet: the health check commits it", old)
        return RevertStep("done", f"{host}: runs {old} on {root}, committed: reverted", old)
    if running != new:
        return RevertStep("refuse", f"{host}: not revertible: it runs {running or '?'} on {root}, neither the rollout's "
                          f"target {new} nor the release {old} it ran before; nothing changed on it")
    if from_root and root == from_root:
        return RevertStep("refuse", f"{host}: not revertible: it runs {new} from {root}, the partition that held {old}; "
                          "nothing changed on it")
    if armed and env.get("resin_root_part") == dev.get("active_index"):
        return RevertStep("refuse", f"{host}: not revertible: {new} on {root} is not committed (upgrade_available=1); "
                          "nothing changed on it")
    hostapp = dev.get("inactive_hostapp") or {}
    problem = previous_release_problem(
        hostapp=bool(dev.get("hostapp")), label=str(dev.get("inactive_root") or "the spare root"), stamp=dev.get("inactive_stamp"),
        image_id=str(hostapp.get("image_id") or ""), version=old, expected_image_id=str(record.get("from_image_id") or ""),
        expected_digest=str(record.get("from_digest") or ""))
    if problem:
        return RevertStep("refuse", f"{host}: not revertible: {problem}; nothing changed on it")
    return RevertStep("switch", f"{host}: {new} -> {old}: switch back to {dev.get('inactive_root')}, which still holds {old}", old)


def revert_outcome(plan: Mapping[str, t.Any], records: Mapping[str, Mapping[str, t.Any]]) -> tuple[str, str]:
    """The revert's status once every wave passed: ``reverted``, or ``incomplete`` naming the
    refused devices."""
    refused = sorted(h for w in plan["waves"] for h in revert_hosts(w, records)
                     if ((records.get(h) or {}).get("revert") or {}).get("status") == "refused")
    if refused:
        return "incomplete", f"every wave went through; {len(refused)} device(s) refused (not revertible): {', '.join(refused)}"
    return "reverted", "every committed device runs the release it ran before"
