# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.rehearsal: one drill on the task's device (update runs as child ansible-playbook
processes, plugin_utils.rehearsal_runner), or the evidence record (plugin_utils.rehearsal_store).
The decisions are plugin_utils.rehearsal's: what a drill needs, how it is judged, the verdict."""

from __future__ import annotations

import json
import os
import random
import re
import time
import typing as t

import yaml

from ansible_collections.osfleet.hup.plugins.modules.rehearsal import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_runner as runner
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_store as store
from ansible_collections.osfleet.hup.plugins.plugin_utils import reconnect
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import load_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, OsfleetError, error_text
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import BREADCRUMBS
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso, parse_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_store import operator
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LOG_HEADER = re.compile(r"^==> (?P<name>[^/]+) <==$")
COLLECTION = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Abort(OsfleetError):
    """The drill cannot go on (the device could not be brought to the first version, a command failed)."""


class DeviceDown(Abort):
    """The device did not answer (within the settle timeout; at once when it is known not to), or
    its power could not be put back on: the next reads of it in this rehearsal try once."""


class NotApplicable(OsfleetError):
    """The drill does not apply to this pair (the advanced drill of a pair the standard update updates)."""


def committed(dev: DeviceState) -> bool:
    return not boot_state(dev).upgrade_available and not any(b in dev.markers for b in BREADCRUMBS)


def collection_version() -> str:
    for name, key in (("MANIFEST.json", "collection_info"), ("galaxy.yml", None)):
        path = os.path.join(COLLECTION, name)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle) if name.endswith(".json") else yaml.safe_load(handle)
        except (OSError, ValueError, yaml.YAMLError):
            continue
        data = (data or {}).get(key, {}) if key else (data or {})
        if data.get("version"):
            return str(data["version"])
    return "unknown"


def split_logs(text: str) -> dict[str, str]:
    logs: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        found = _LOG_HEADER.match(line)
        if found:
            current = found.group("name")
            logs[current] = []
        elif current is not None:
            logs[current].append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in logs.items()}


class ActionModule(OsfleetAction):
    """osfleet.hup.rehearsal"""

    DOCUMENTATION = DOCUMENTATION
    HEARTBEAT = False
    LOGS_ITSELF = True

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        if not _ID.match(args["run_id"] or ""):
            raise rh.RehearsalError(f"run_id {args['run_id']!r}: letters, digits, '.', '_' and '-'")
        if args["phase"] == "evidence":
            return self._evidence(args, session.host)
        if not args.get("drill"):
            raise rh.RehearsalError("phase drill needs drill")
        return self._drill(args, session)

    # -- a drill
    def _drill(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        name = args["drill"]
        choice = self._pair_method(args)
        # decided before the device is touched: a takeover pair's standard drills, a standard pair's advanced one
        skip = rh.not_applicable(name, choice) or rh.missing_commands(name, args["commands"])
        if skip or self.check_mode:
            result = rh.not_run(name, skip or "check mode runs no drill")
            return StepResult(changed=False, msg=f"drill {name}: not run: {result.reason}",
                              data={"drill": {**result.as_dict(), "device": session.host}, "device": {},
                                    "method": (choice.method or "") if choice else "", "logs": {}})
        start, started = time.monotonic(), time.time()
        self.args, self.session, self.runs, self.read_error = args, session, [], ""
        self.work = os.path.join(os.path.abspath(args["work_dir"]), session.host, name)
        # what an earlier drill of this rehearsal knew of the device: it did not answer (rh.down_note)
        self.note_path = store.down_note_path(args["work_dir"], session.host)
        self.down = rh.known_down(store.load_down_note(self.note_path), args["run_id"])
        details: dict[str, t.Any] = {}
        before: DeviceState | None = None
        try:
            before = self._to_first_version(details)
            data_before = self._data("write")
            obs = getattr(self, f"_drill_{name}")(details)
            if obs.data_intact is None:  # (the advanced drill checks its data between the interruption and the rerun)
                data_after = self._data("check") if obs.reachable else None
                obs = rh.Observed(**{**obs.__dict__, "data_intact": None if data_after is None else data_after == data_before})
            result = rh.judge_drill(name, args["from_version"], args["to_version"], obs, time.monotonic() - start, details)
            if not obs.reachable and self.read_error:  # why it did not answer
                result.reason = self.read_error
        except NotApplicable as exc:
            result = rh.not_run(name, str(exc))
        except Abort as exc:
            result = rh.DrillResult(name, "failed", str(exc), time.monotonic() - start, details)
        try:
            store.save_down_note(self.note_path, self.down)  # what this drill knew of the device, for its next drills
        except rh.RehearsalError as exc:  # the drill's result stands; the next drills wait as before
            details["down_note"] = str(exc)
        details["runs"] = [{"name": runner.run_name(r.argv), "rc": r.rc, "changed": r.changed,
                            "duration": r.duration, "interrupted": r.hit_at is not None, "tail": r.tail()} for r in self.runs]
        result.duration = time.monotonic() - start
        result.details = details
        method = next((m for m in (r.method() for r in self.runs) if m), "")
        return StepResult(changed=bool(self.runs), msg=f"drill {name}: {result.outcome}" + (f": {result.reason}" if result.reason else ""),
                          actions=[f"ran {len(self.runs)} update run(s)"],
                          data={"drill": {**result.as_dict(), "device": session.host, "started": iso(started)},
                                "device": before.facts() if before else {}, "method": method,
                                "logs": self._logs(name)})

    @staticmethod
    def _pair_method(args: dict[str, t.Any]) -> t.Any:
        """The pair's method as the catalog has it (rh.pair_method), None when it cannot tell."""
        if not args.get("catalog") or not args.get("device_type"):
            return None
        try:
            cat = load_catalog(args["catalog"], sha256=args.get("catalog_sha256") or None, allow_http=args["catalog_allow_http"])
        except CatalogError:
            return None
        return rh.pair_method(cat, str(args["device_type"]), args["from_version"], args["to_version"])

    def _went_down(self, reason: str) -> DeviceDown:
        self.down = rh.down_note(self.args["run_id"], self.args["drill"], reason, time.time())
        return DeviceDown(reason)

    def _read(self, what: str) -> DeviceState:
        """The device's state, waited for up to settle_timeout (a device known not to answer, see
        rh.down_note, is tried once: DeviceDown at once, naming it and why it is known)."""
        deadline = time.monotonic() + int(self.args["settle_timeout"])
        self.session.reset_connection()
        if self.down is not None:
            try:
                dev = probe(self.session)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                if not reconnect.transient(exc):
                    raise
                raise DeviceDown(rh.not_waited(self.session.host, self.down, f"{what}: {error_text(exc)}")) from None
            self.down = None
            return dev

        def attempt() -> DeviceState:
            try:
                return probe(self.session)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                lasting = rh.lasting_connection_failure(str(exc))
                if lasting:  # not retried until the deadline: it would only wait
                    raise Abort(f"{what}: {lasting} ({str(exc).strip()[:300]})") from None
                raise

        try:
            return reconnect.retry_until(attempt, self.session, deadline=deadline, what=what)
        except Abort:
            raise
        except OsfleetError as exc:
            raise self._went_down(f"{what} within the settle timeout ({int(self.args['settle_timeout'])} s): {exc}") from None

    def _try_read(self) -> DeviceState | None:
        try:
            return self._read("the device did not answer after the drill")
        except Abort as exc:
            self.read_error = str(exc)
            return None

    def _command(self, key: str, version: str = "") -> str:
        command = str(self.args["commands"].get(key) or "")
        done = runner.run_command(command, device=self.session.host, version=version, timeout=max(60, int(self.args["settle_timeout"])))
        if done.rc != 0:
            reason = f"the device's {key} command failed (exit {done.rc}): {done.output[-500:]}"
            raise self._went_down(reason) if key == "power_on" else Abort(reason)
        if key in ("power_on", "reflash"):
            self.down = None  # it may answer again: the next read waits for it
        return done.output

    def _update(self, version: str, run: str, extra: dict[str, t.Any] | None = None, check: bool = False, **watch: t.Any) -> runner.Run:
        run_id = f"{self.args['run_id']}-{run}"
        # the drills roll the target back on purpose: a later drill tries it again (hup_retry_rolled_back)
        update_vars = {"hup_retry_rolled_back": True, **self.args["update_vars"], "hup_target_version": version, "hup_run_id": run_id,
                       **(extra or {})}
        argv = runner.playbook_argv(self.args["inventory"], self.session.host, update_vars, self.work, f"{run}-{len(self.runs) + 1}",
                                    check=check)
        done = runner.run_playbook(argv, host=self.session.host, workdir=self.work, name=f"{run}-{len(self.runs) + 1}",
                                   timeout=int(self.args["timeout"]), **watch)
        self.runs.append(done)
        return done

    def _to_first_version(self, details: dict[str, t.Any]) -> DeviceState:
        """The device on from_version, committed: as it is, reflashed, or updated (a downgrade)."""
        first = self.args["from_version"]
        known = self.down
        if rh.first_read(known, bool(self.args["commands"].get("reflash"))) == rh.READ_REFLASH and known is not None:
            # not waited for: a reflash may bring it back
            self._command("reflash", first)
            details["prepared"] = f"reflashed with {first} (it did not answer in the drill {known['drill']}: {known['reason']})"
            return self._on_first(first, details)
        dev = self._read("the device did not answer before the drill")
        if same_version(dev.version, first) and committed(dev):
            details["prepared"] = "was on the first version"
            return dev
        if self.args["commands"].get("reflash"):
            self._command("reflash", first)
            details["prepared"] = f"reflashed with {first} (from {dev.version})"
        else:
            done = self._update(first, "prepare", {"hup_allow_downgrade": True})
            details["prepared"] = f"updated to {first} from {dev.version} (exit {done.rc})"
        return self._on_first(first, details)

    def _on_first(self, first: str, details: dict[str, t.Any]) -> DeviceState:
        dev = self._read(f"the device did not answer after it was brought to {first}")
        if not (same_version(dev.version, first) and committed(dev)):
            raise Abort(f"could not bring the device to {first} ({details['prepared']}): it runs {dev.version}"
                        + ("" if committed(dev) else ", not committed"))
        return dev

    def _data(self, mode: str) -> str | None:
        try:
            return self.session.run("rehearsal_data", mode=mode, path=self.args["data_path"], what=f"the drill's data ({mode})").stdout.strip()
        except OsfleetError as exc:
            if mode == "write":
                raise Abort(f"cannot put the drill's data on the device: {exc}") from None
            return None

    def _observed(self, runs: t.Sequence[runner.Run], interrupted: bool | None = None) -> rh.Observed:
        dev = self._try_read()
        method = next((m for m in (r.method() for r in runs) if m), None)
        if dev is None:
            return rh.Observed(reachable=False, rcs=tuple(r.rc for r in runs), interrupted=interrupted, method=method)
        return rh.Observed(dev.version, committed(dev), True, None, tuple(r.rc for r in runs), tuple(r.changed for r in runs), interrupted,
                           method=method)

    def _logs(self, name: str) -> dict[str, str]:
        try:
            out = self.session.run("rehearsal_logs", dir=self.args["log_dir"], prefix=f"{self.args['run_id']}-{name}", check=False,
                                   what="the drill's run logs")
        except OsfleetError:
            return {}
        return split_logs(out.stdout)

    # the drills: each returns what it observed
    def _drill_update(self, details: dict[str, t.Any]) -> rh.Observed:
        first = self._update(self.args["to_version"], "update-1")
        second = self._update(self.args["to_version"], "update-2") if first.rc == 0 else None
        return self._observed([first] + ([second] if second else []))

    def _faulted(self, key: str, details: dict[str, t.Any]) -> rh.Observed:
        name = "health" if key == "health_fault" else "boot"
        self._command(key)
        try:
            done = self._update(self.args["to_version"], name)
        finally:
            try:
                self._command("fault_clear")
            except Abort as exc:
                details["fault_clear"] = str(exc)
        time.sleep(3)  # a rollback's reboot the run did not wait for
        details["rolled_back"] = done.rolled_back() or ""
        obs = self._observed([done])
        return rh.Observed(**{**obs.__dict__, "rolled_back": details["rolled_back"]})

    def _drill_health(self, details: dict[str, t.Any]) -> rh.Observed:
        return self._faulted("health_fault", details)

    def _drill_boot(self, details: dict[str, t.Any]) -> rh.Observed:
        return self._faulted("boot_fault", details)

    def _interrupted(self, name: str, moment: str, delay: float, hit: t.Callable[[t.Any], None], details: dict[str, t.Any],
                     after: t.Callable[[], None] | None = None, rerun_always: bool = True) -> rh.Observed:
        run = f"{name}"
        first = self._update(self.args["to_version"], run, moment=moment, delay=delay, on_moment=hit)
        details["hit"] = first.hit_at is not None
        if after is not None and first.hit_at is not None:
            after()
        between = self._try_read()
        details["between"] = {"version": between.version, "committed": committed(between)} if between else "no answer"
        runs = [first]
        if rerun_always or first.rc != 0:
            time.sleep(2)
            runs.append(self._update(self.args["to_version"], run))  # the same run id: it resumes
        return self._observed(runs, first.hit_at is not None)

    def _power(self, name: str, moment: str, delay: float, details: dict[str, t.Any]) -> rh.Observed:
        def cut(proc: t.Any) -> None:
            self._command("power_cut")
            runner.kill_tree(proc)  # the run would only wait for a device without power

        def back() -> None:
            self._command("power_on")

        return self._interrupted(name, moment, delay, cut, details, back)

    def _drill_power_write(self, details: dict[str, t.Any]) -> rh.Observed:
        return self._power("power_write", "write", random.uniform(0.3, 1.5), details)

    def _drill_power_bootfiles(self, details: dict[str, t.Any]) -> rh.Observed:
        return self._power("power_bootfiles", "bootfiles", random.uniform(0.0, 0.3), details)

    def _drill_controller_killed(self, details: dict[str, t.Any]) -> rh.Observed:
        return self._interrupted("controller_killed", "write", random.uniform(0.3, 1.5), runner.kill_tree, details)

    def _drill_link_cut(self, details: dict[str, t.Any]) -> rh.Observed:
        def cut(_proc: t.Any) -> None:
            self._command("link_down")
            try:
                time.sleep(int(self.args["link_down_seconds"]))
            finally:
                self._command("link_up")

        return self._interrupted("link_cut", "write", random.uniform(0.3, 1.5), cut, details, rerun_always=False)

    def _drill_advanced_staged(self, details: dict[str, t.Any]) -> rh.Observed:
        """The advanced update interrupted while it stages the disk image in RAM (the controller
        killed, and the power cut when the device has the commands): the old OS untouched, its data
        intact; a rerun completes. A pair the standard update updates has no advanced drill."""
        plan = self._update(self.args["to_version"], "advanced_staged-check", check=True)
        method = plan.method()
        if plan.rc != 0 or not method:
            raise Abort(f"the check-mode run that names the pair's method failed (exit {plan.rc}): {plan.tail(3)}")
        if method != "takeover":
            raise NotApplicable(f"the pair updates with {method}, not the advanced update (takeover)")
        power = all(str(self.args["commands"].get(c) or "").strip() for c in ("power_cut", "power_on"))
        details["interruption"] = "controller killed" + (" and power cut" if power else "")
        data_before = self._data("check")

        def hit(proc: t.Any) -> None:
            runner.kill_tree(proc)
            if power:
                self._command("power_cut")

        first = self._update(self.args["to_version"], "advanced_staged", moment="staged", delay=random.uniform(0.0, 1.0), on_moment=hit)
        details["hit"] = first.hit_at is not None
        if power and first.hit_at is not None:
            self._command("power_on")
        between = self._try_read()
        details["between"] = {"version": between.version, "committed": committed(between)} if between else "no answer"
        intact = None if between is None else self._data("check") == data_before
        details["data_intact_between"] = intact
        runs = [first]
        if between is not None:
            time.sleep(2)
            runs.append(self._update(self.args["to_version"], "advanced_staged"))
        obs = self._observed(runs, first.hit_at is not None)
        return rh.Observed(**{**obs.__dict__, "between": between.version if between else None,
                              "data_intact": intact if intact is not None else (False if between is None else None)})

    # -- the evidence
    def _evidence(self, args: dict[str, t.Any], host: str) -> StepResult:
        """One record for the pair from the drills of every bench device of the device type (results)."""
        results = []
        for raw in args["results"]:
            device = str(raw.get("device_name") or "")  # the role adds it: the bench device the result came from
            if isinstance(raw.get("drill"), dict) and not raw.get("unreachable"):
                results.append({**raw, "drill": {**raw["drill"], "device": raw["drill"].get("device") or device}})
            elif raw.get("item") in rh.DRILLS:  # the drill's task failed (or its device went away): the drill failed, saying why
                why = str(raw.get("reason") or raw.get("msg") or "the drill's task failed")
                if raw.get("unreachable"):
                    why = f"the device did not answer: {why}"
                results.append({"drill": {**rh.DrillResult(str(raw["item"]), "failed", why).as_dict(), "device": device}})
        reported = {(str(r["drill"].get("device") or ""), r["drill"]["name"]) for r in results}
        for device, names in sorted((args.get("assigned") or {}).items()):
            for name in names or []:
                if name in rh.DRILLS and (str(device), name) not in reported:  # its device left the play before the drill reported
                    why = f"{device} did not report the drill (it failed or went away before)"
                    results.append({"drill": {**rh.DrillResult(name, "failed", why).as_dict(), "device": str(device)}})
        if not results:
            raise rh.RehearsalError("phase evidence needs the drills' results (results)")
        order = list(rh.DRILLS)
        results.sort(key=lambda r: (order.index(r["drill"]["name"]), str(r["drill"].get("device") or "")))
        drills = [r["drill"] for r in results]
        devices = sorted({str(d.get("device")) for d in drills if d.get("device")}) or [host]
        device_type = next((str(r["device"]["device_type"]) for r in results if (r.get("device") or {}).get("device_type")),
                           str(args.get("device_type") or ""))
        method = next((str(r["method"]) for r in results if r.get("method")), "")
        logs: dict[str, str] = {}
        for r in results:
            logs.update(r.get("logs") or {})
        digest, images = "", {}
        if not args.get("catalog"):
            raise rh.RehearsalError("phase evidence needs the catalog (hup_catalog)")
        if device_type:
            try:
                cat = load_catalog(args["catalog"], sha256=args.get("catalog_sha256") or None, allow_http=args["catalog_allow_http"])
                target = cat.release(device_type, args["to_version"])
                images["target"] = target.digest
                delta = target.delta_from(args["from_version"])
                if delta is not None:
                    images["delta"] = delta.digest
                try:
                    images["from"] = cat.release(device_type, args["from_version"]).digest
                except CatalogError:
                    pass
            except CatalogError as exc:
                raise rh.RehearsalError(f"cannot read the catalog for the evidence: {exc}") from None
            digest = store.target_digests(args["catalog"], [device_type], args["to_version"], sha256=args.get("catalog_sha256"),
                                          allow_http=args["catalog_allow_http"]).get(device_type) or ""
        pair = rh.Pair(device_type or "unknown", args["from_version"], args["to_version"], digest or "sha256:unknown")
        now = time.time()
        # the drills ran in parallel: the rehearsal started with the first of them
        starts = [parse_iso(str(d["started"])) for d in drills if d.get("started")]
        started = min([s for s in starts if s] or [now - max([float(d.get("duration") or 0) for d in drills] or [0])])
        record = rh.evidence_record(pair=pair, devices=devices, method=method, image_digests=images, collection_version=collection_version(),
                                    drills=drills, run_id=args["run_id"], started=started, ended=now, operator=operator(), logs=logs)
        if not device_type:
            record.update(status="failed", reason=f"no drill read the device (its type is not known): {record['reason']}")
        paths = {} if self.check_mode else store.save(str(args["dir"] or store.default_dir()), record)
        return StepResult(changed=bool(paths), msg=f"rehearsal {pair.text()} on {', '.join(devices)}: {record['status']}: {record['reason']}",
                          actions=[f"wrote {p}" for p in paths.values()],
                          data={"record": record, "paths": paths, "passed": record["status"] == "passed"})
