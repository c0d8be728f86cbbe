# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The run report: from the events of one ansible-playbook run to the report (pure Python).

The callback ``osfleet.hup.report`` feeds :class:`ReportBuilder` with what it sees (plays, task
starts, task results, the ``set_stats`` data under :data:`STATS_KEY`, the recap) and renders what
:meth:`ReportBuilder.build` returns (``report_render``, ``report_html``). The schema of that dict
is ``report.json``, documented in docs/report.md; this module is its one definition.
"""

from __future__ import annotations

import datetime
import re
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field

SCHEMA = "osfleet.hup/report/1"
#: the key of ``ansible.builtin.set_stats`` data that the report reads (docs/report.md)
STATS_KEY = "osfleet_hup"
#: every outcome of a device, in the order the report lists counts
OUTCOMES = ("committed", "current", "planned", "failed", "rolled_back", "unreachable", "incomplete", "deferred", "skipped")
#: outcomes that fail a device (junit failure, non-zero counts in the summary)
FAILED_OUTCOMES = ("failed", "rolled_back", "unreachable", "incomplete")
#: the facts of the standard role that the report reads from set_fact results
ROLE_FACTS = ("hup_run_log", "hup_run_id_effective", "hup_failure")
MODULE_PREFIX = "osfleet.hup."
#: modules of the collection that are no step of a device: the rollout's bookkeeping (on localhost,
#: or delegated there for a device's record)
CONTROLLER_MODULES = ("osfleet.hup.rollout",)
#: roles whose every task is about the device it runs on: their failures make a device of a host
#: that ran no step yet (a rollout's own tasks on localhost never do)
DEVICE_ROLES = ("osfleet.hup.standard",)
#: how an osfleet.hup step after the preflight reports a device it cannot reach: a failure (so the
#: role's rescue runs) whose message starts so (plugin_utils/action.py UNREACHABLE); the report
#: counts it as unreachable (the preflight's result is unreachable itself)
CONNECTION_FAILED = "the device was unreachable:"
_LOG_RUN_ID = re.compile(r"osfleet-hup\.([A-Za-z0-9._-]+)\.log$")


def iso(epoch: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds (``2026-12-01T10:00:00.123Z``), None stays None."""
    if epoch is None:
        return None
    stamp = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def parse_iso(value: str | None) -> float | None:
    """The inverse of :func:`iso` (any ISO 8601 with a zone or ``Z``)."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def counts_text(counts: Mapping[str, int]) -> str:
    """``2 committed, 1 rolled back`` (outcomes in OUTCOMES order, zero counts left out)."""
    return ", ".join(f"{counts[o]} {o.replace('_', ' ')}" for o in OUTCOMES if counts.get(o)) or "no devices"


def strip_host(msg: t.Any, host: str) -> str:
    """A step's message without the ``<device>: `` prefix every osfleet.hup message carries."""
    text = " ".join(str(msg if msg is not None else "").split())
    return text[len(host) + 2:] if text.startswith(host + ": ") else text


@dataclass
class Step:
    """One osfleet.hup task that ran on a device."""

    name: str  # the role's hup_step, else the module's short name
    module: str
    task: str
    started: float
    ended: float | None = None
    status: str = "running"  # ok, changed, failed, ignored (failed with ignore_errors), unreachable
    msg: str = ""

    def as_dict(self) -> dict[str, t.Any]:
        duration = None if self.ended is None else round(self.ended - self.started, 3)
        return {"step": self.name, "module": self.module, "task": self.task, "status": self.status,
                "started": iso(self.started), "ended": iso(self.ended), "duration": duration, "msg": self.msg}


@dataclass
class Device:
    """What the run showed of one device (filled by :class:`ReportBuilder`)."""

    name: str
    play: str = ""
    steps: list[Step] = field(default_factory=list)
    first: float | None = None
    last: float | None = None
    target_version: str | None = None
    version_before: str | None = None
    version_seen: str | None = None  # the version in the last result that carried the device's state
    device_type: str | None = None
    phase: str | None = None
    method: str | None = None
    source: str | None = None
    bytes: int | None = None
    cached: bool | None = None
    committed: bool = False
    rolled_back: bool = False
    rollback_reason: str | None = None
    failed_step: str | None = None
    reason: str | None = None
    message: str | None = None  # the message the run failed the device with (the role's summary)
    unreachable: bool = False
    changed_before_unreachable: bool = False
    changed: bool = False
    run_id: str | None = None
    run_log: str | None = None
    running: dict[str, Step] = field(default_factory=dict)  # task id -> step that has not ended
    not_tried: bool = False  # a host of a play that Ansible stopped before any task ran on it


def _outcome(dev: Device, check_mode: bool) -> tuple[str, str]:
    """(outcome, the short text the report shows, e.g. ``failed at step fetch``)."""
    if dev.unreachable:
        return "unreachable", "unreachable" + (" after a change" if dev.changed_before_unreachable else " (nothing changed)")
    if dev.rolled_back:
        return "rolled_back", f"rolled back ({dev.rollback_reason or 'unknown'})"
    if dev.failed_step:
        return "failed", f"failed at step {dev.failed_step}"
    if dev.phase == "current":
        return "current", "already current"
    if dev.not_tried:
        return "skipped", "not tried (Ansible stopped the play before its batch)"
    if not dev.steps:
        return "skipped", "skipped"
    if check_mode:
        return "planned", "planned (check mode)"
    if dev.committed:
        return "committed", "committed"
    return "incomplete", f"incomplete (stopped after step {dev.steps[-1].name})"


class ReportBuilder:
    """Collects the events of one run; :meth:`build` returns the report dict (report.json)."""

    def __init__(self, run_id: str, started: float, *, playbook: str = "", check_mode: bool = False,
                 controller: Mapping[str, t.Any] | None = None) -> None:
        self.run_id = run_id
        self.started = started
        self.playbook = playbook
        self.check_mode = check_mode
        self.controller = dict(controller or {})
        self.devices: dict[str, Device] = {}
        self.plays: list[str] = []
        self.play = ""
        #: per play (its id): its name and every host it targets, and the hosts a task started on
        self._play_hosts: dict[str, tuple[str, list[str]]] = {}
        self._tried: dict[str, set[str]] = {}
        self._play_key = ""

    # -- events
    def device(self, host: str) -> Device:
        if host not in self.devices:
            self.devices[host] = Device(host, play=self.play)
        return self.devices[host]

    def play_start(self, name: str, key: str | None = None, hosts: t.Sequence[str] | None = None) -> None:
        """A play (or a serial batch of it: Ansible starts the play again for each) starts; ``key``
        identifies the play, ``hosts``: every host it targets (all its batches)."""
        self.play = name
        self._play_key = key or name
        if self._play_key not in self._play_hosts:
            self.plays.append(name)
            self._play_hosts[self._play_key] = (name, list(hosts or ()))
            self._tried[self._play_key] = set()

    def task_start(self, host: str, task_id: str, task: str, module: str, step: str | None, when: float) -> None:
        self._tried.setdefault(self._play_key, set()).add(host)
        if not module.startswith(MODULE_PREFIX) or module in CONTROLLER_MODULES:
            return
        dev = self.device(host)
        dev.running[task_id] = Step(step or module[len(MODULE_PREFIX):], module, task, when)

    def task_result(self, host: str, task_id: str, status: str, *, task: str, module: str, step: str | None,
                    result: Mapping[str, t.Any], args: Mapping[str, t.Any] | None, when: float,
                    ignore_errors: bool = False, role: str | None = None) -> None:
        """``status``: ok, failed, skipped or unreachable (the callback's v2_runner_on_* name);
        ``role``: the FQCN of the role the task belongs to, if any."""
        args = args or {}
        if module in ("ansible.builtin.set_fact", "ansible.legacy.set_fact"):
            self._role_facts(host, result.get("ansible_facts") or {})
            return
        is_step = module.startswith(MODULE_PREFIX) and module not in CONTROLLER_MODULES
        if not is_step and host not in self.devices:
            if status == "unreachable":
                self.device(host)
            elif status != "failed" or ignore_errors or role not in DEVICE_ROLES:
                return  # not an update task of a device the report knows (e.g. a rollout's own bookkeeping)
        dev = self.device(host)
        started = dev.running.pop(task_id, None)
        if status == "skipped":
            return
        msg = strip_host(result.get("msg", ""), host)
        if is_step and status == "failed" and not ignore_errors and msg.startswith(CONNECTION_FAILED):
            status = "unreachable"
        if is_step:
            record = started or Step(step or module[len(MODULE_PREFIX):], module, task, when)
            record.ended = when
            record.msg = msg if status != "ok" else ""
            record.status = ("ignored" if ignore_errors else "failed") if status == "failed" else \
                "unreachable" if status == "unreachable" else "changed" if result.get("changed") else "ok"
            dev.steps.append(record)
            dev.first = record.started if dev.first is None else min(dev.first, record.started)
            dev.last = when if dev.last is None else max(dev.last, when)
            self._step_values(dev, record.name, module, result, args, status)
        if status == "unreachable":
            if not dev.unreachable:
                dev.changed_before_unreachable = dev.changed
                dev.reason = dev.reason or msg
            dev.unreachable = True
            dev.last = when if dev.last is None else max(dev.last, when)
        elif status == "failed" and not ignore_errors:
            if dev.failed_step is None and not dev.rolled_back and not dev.unreachable:
                dev.failed_step = step or (module[len(MODULE_PREFIX):] if is_step else task)
                dev.reason = msg
            elif not is_step:
                dev.message = msg
            dev.last = when if dev.last is None else max(dev.last, when)
        if result.get("changed") and status != "skipped":
            dev.changed = True

    def _role_facts(self, host: str, facts: Mapping[str, t.Any]) -> None:
        if not any(key in facts for key in ROLE_FACTS):
            return
        dev = self.device(host)
        if facts.get("hup_run_log"):
            dev.run_log = str(facts["hup_run_log"])
            found = _LOG_RUN_ID.search(dev.run_log)
            dev.run_id = found.group(1) if found else dev.run_id
        if facts.get("hup_run_id_effective") and not dev.run_id:
            dev.run_id = str(facts["hup_run_id_effective"])
        failure = facts.get("hup_failure")
        if isinstance(failure, Mapping) and failure.get("step"):
            dev.failed_step = dev.failed_step or str(failure["step"])
            dev.reason = dev.reason or strip_host(failure.get("msg", ""), host)
            if str(failure.get("rolled_back")).lower() == "true":
                dev.rolled_back = True
                dev.rollback_reason = dev.rollback_reason or str(failure.get("rollback_reason") or "") or None

    def _step_values(self, dev: Device, step: str, module: str, result: Mapping[str, t.Any],
                     args: Mapping[str, t.Any], status: str) -> None:
        short = module[len(MODULE_PREFIX):]
        state = result.get("device")
        if isinstance(state, Mapping) and state.get("version"):
            dev.version_seen = str(state["version"])
            dev.device_type = dev.device_type or (str(state["device_type"]) if state.get("device_type") else None)
        if args.get("target_version") and not dev.target_version:
            dev.target_version = str(args["target_version"])
        if short == "preflight":
            if isinstance(state, Mapping) and state.get("version"):
                dev.version_before = str(state["version"])
            release = result.get("release")
            if isinstance(release, Mapping) and release.get("version"):
                dev.target_version = str(release["version"])
            dev.phase = result.get("phase") or dev.phase
            dev.method = result.get("method") or dev.method
        elif short == "fetch" and status == "ok":
            dev.source = result.get("source") or dev.source
            if result.get("bytes") is not None:
                dev.bytes = int(result["bytes"])
            dev.cached = bool(result.get("cached")) if "cached" in result else dev.cached
        elif short == "rootfs" and status == "ok" and result.get("mode") == "hostapp" and result.get("source"):
            # a balenaOS device's hostapp-update pulls in this step (the fetch step fetched nothing ahead
            # and named only the source tried first): the source it pulled from, and its bytes
            dev.source = str(result["source"])
            dev.bytes = (dev.bytes or 0) + int(result.get("bytes") or 0)
        elif short == "takeover" and status == "ok":
            # the advanced update's download: the whole disk image, fetched by the device into RAM (in
            # check mode: what it would download)
            dev.source = "disk image"
            plan = result.get("plan") if isinstance(result.get("plan"), Mapping) else {}
            got = int(plan.get("download_bytes") or 0) if self.check_mode else int(result.get("downloaded") or 0)
            dev.bytes = (dev.bytes or 0) + got
        elif short == "health":
            if result.get("rolled_back"):
                dev.rolled_back = True
                dev.rollback_reason = str(result.get("rollback_reason") or "unknown")
                dev.failed_step = dev.failed_step or step
                dev.reason = dev.reason or strip_host(result.get("msg", ""), dev.name)
            elif status == "ok":
                dev.committed = bool(result.get("committed", True))

    # -- the report
    def build(self, ended: float, *, custom_stats: Mapping[str, t.Any] | None = None,
              recap: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, t.Any]:
        """The report dict (report.json): run, totals, waves, devices. See docs/report.md."""
        custom = custom_stats or {}
        data = custom.get("_run", {}).get(STATS_KEY) or {}
        data = dict(data) if isinstance(data, Mapping) else {}
        per_device = dict(data.get("devices") or {})
        for host, values in custom.items():  # set_stats per_host: true
            if host != "_run" and isinstance(values, Mapping) and isinstance(values.get(STATS_KEY), Mapping):
                per_device[host] = {**(per_device.get(host) or {}), **values[STATS_KEY]}
        waves_in = {str(k): dict(v or {}) for k, v in (data.get("waves") or {}).items()}
        for wave, spec in waves_in.items():
            for host in spec.get("devices") or []:
                per_device.setdefault(str(host), {}).setdefault("wave", wave)
        for host in per_device:  # a device the rollout names but that ran nothing (e.g. a later wave)
            self.device(str(host))
        not_tried = self.not_tried()
        for host, play in not_tried.items():
            if host not in self.devices:
                self.devices[host] = Device(host, play=play, not_tried=True)
        recap = recap or {}
        devices = [self._device_dict(dev, per_device.get(name) or {}, recap.get(name)) for name, dev in sorted(self.devices.items())]
        waves = _waves(devices, waves_in)
        order = {name: w["order"] for w in waves for name in w["devices"]}
        devices.sort(key=lambda d: (order[d["name"]], d["name"]))
        totals = {"devices": len(devices), **{o: sum(1 for d in devices if d["outcome"] == o) for o in OUTCOMES}}
        rollout = dict(data.get("rollout") or {})
        halted = [w["name"] for w in waves if w["halted"]]
        return {
            "schema": SCHEMA,
            "run": {
                "id": self.run_id, "playbook": self.playbook, "plays": self.plays, "check_mode": self.check_mode,
                "started": iso(self.started), "ended": iso(ended), "duration": round(ended - self.started, 3),
                "controller": self.controller,
                "target_versions": sorted({d["target_version"] for d in devices if d["target_version"]}),
                "ok": not any(totals[o] for o in FAILED_OUTCOMES) and not halted and not not_tried,
                "halted": bool(halted), "halted_waves": halted,
                "not_tried": sorted(not_tried),
            },
            "rollout": rollout or None,
            "totals": totals,
            "waves": waves,
            "devices": devices,
        }

    def not_tried(self) -> dict[str, str]:
        """The hosts of a play on which no task started (host -> play name): Ansible stopped the play
        before their batch (a ``serial`` batch in which every host failed or was unreachable, or more
        failures than ``max_fail_percentage``). A play of which no host started a task is left out:
        Ansible stops a play only after a batch of it failed, so such a play ended itself (``meta:
        end_play`` as its first task, which sends no runner callback, e.g. the rollout's rehearsal
        gate play when no evidence is required)."""
        out: dict[str, str] = {}
        for key, (name, hosts) in self._play_hosts.items():
            tried = self._tried.get(key, set())
            if not tried:
                continue
            for host in hosts:
                if host not in tried:
                    out.setdefault(host, name)
        return out

    def _device_dict(self, dev: Device, extra: Mapping[str, t.Any], recap: Mapping[str, int] | None) -> dict[str, t.Any]:
        outcome, text = _outcome(dev, self.check_mode)
        reason = dev.reason
        if outcome == "rolled_back":
            reason = dev.reason or f"rolled back ({dev.rollback_reason})"
        if extra.get("outcome") in OUTCOMES:  # the rollout's word (e.g. deferred) wins
            outcome = str(extra["outcome"])
            text = str(extra.get("outcome_text") or (outcome if outcome != "current" else "already current"))
            reason = str(extra["reason"]) if extra.get("reason") else reason
        if outcome == "unreachable":
            after = None
        elif outcome == "rolled_back" or (outcome == "failed" and not dev.committed):
            after = dev.version_seen if dev.version_seen and not dev.rolled_back else dev.version_before
        else:
            after = dev.version_seen
        # versions the rollout recorded, for a device this run did not see (this run's win)
        before, target = dev.version_before or extra.get("version_before"), dev.target_version or extra.get("target_version")
        versions_from = "observed" if after is not None else None
        if after is None and outcome != "unreachable" and dev.version_seen is None:
            after = extra.get("version_after")
            versions_from = "record" if after is not None else None
        known = {"wave", "outcome", "outcome_text", "reason", "version_before", "version_after", "target_version"}
        return {
            "name": dev.name,
            "wave": str(extra.get("wave") or dev.play or "all"),
            "outcome": outcome,
            "outcome_text": text,
            "reason": reason or None,
            "message": dev.message,
            "failed_step": dev.failed_step if outcome in ("failed", "rolled_back") else None,
            "device_type": dev.device_type,
            "target_version": target,
            "version_before": before,
            "version_after": after,
            "versions_from": versions_from,
            "phase": dev.phase,
            "method": dev.method,
            "source": dev.source,
            "bytes": dev.bytes,
            "cached": dev.cached,
            "rolled_back": dev.rolled_back,
            "rollback_reason": dev.rollback_reason if dev.rolled_back else None,
            "changed": dev.changed,
            "run_id": dev.run_id,
            "run_log": dev.run_log,
            "started": iso(dev.first),
            "ended": iso(dev.last),
            "duration": None if dev.first is None or dev.last is None else round(dev.last - dev.first, 3),
            "steps": [s.as_dict() for s in dev.steps],
            "recap": dict(recap) if recap else None,
            "extra": {k: v for k, v in extra.items() if k not in known},
        }


def _waves(devices: list[dict[str, t.Any]], spec: Mapping[str, Mapping[str, t.Any]]) -> list[dict[str, t.Any]]:
    """One entry per wave: the set_stats waves in their ``order``, then the others as first seen."""
    names: list[str] = sorted(spec, key=lambda w: (spec[w].get("order", 1 << 30), w))
    for dev in devices:
        if dev["wave"] not in names:
            names.append(dev["wave"])
    out = []
    for index, name in enumerate(names):
        members = [d for d in devices if d["wave"] == name]
        given = dict(spec.get(name) or {})
        starts = [parse_iso(d["started"]) for d in members if d["started"]]
        ends = [parse_iso(d["ended"]) for d in members if d["ended"]]
        halted = bool(given.pop("halted", False))
        reason = given.pop("reason", None) or given.pop("decision", None)
        given.pop("devices", None)
        given.pop("order", None)
        out.append({
            "name": name,
            "order": index + 1,
            "devices": [d["name"] for d in members],
            "counts": {o: sum(1 for d in members if d["outcome"] == o) for o in OUTCOMES},
            "started": iso(min(s for s in starts if s is not None)) if any(s is not None for s in starts) else None,
            "ended": iso(max(e for e in ends if e is not None)) if any(e is not None for e in ends) else None,
            "halted": halted,
            "decision": str(reason) if reason else ("halted" if halted else "no wave limit (not a rollout)" if name not in spec
                                                    else "continued" if starts else "not started"),
            "extra": given,
        })
    return out
