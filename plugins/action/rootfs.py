# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.rootfs: probe the cache and the inactive root, write, verify the stamp."""

from __future__ import annotations

import time
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.rootfs import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult, device_wait_seconds
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import apply_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import Target, open_catalog, registry_auth, resolve_target, stamp_summary
from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import login_refusal
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import plan_point_at_running
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.rootfs import RootfsArgs, decide_rootfs, stamped
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import probe_switch
from ansible_collections.osfleet.hup.plugins.plugin_utils import watchdog
from ansible_collections.osfleet.hup.plugins.plugin_utils.shell import Call
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import describe_attempt_errors
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.hostapp import (
    JOB_HOOKS_FAILED, JOB_WRITTEN, JOB_WRONG, MODE_HOSTAPP, TRANSPORT_PUSH, DeviceImages, HostappAttempt, HostappJob, decide_hostapp_write,
    image_dir_problem, job_failure_text, judge_job,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.archive import archive_name
from ansible_collections.osfleet.hup.plugins.plugin_utils.writer import ExportWriter, HostappWriter, writer_for

#: the most seconds one call waits on the device for hostapp-update (then the controller calls again)
HOSTAPP_WAIT = 30


def point_env_at_running(session: DeviceSession, extra_keep: t.Sequence[str]) -> None:
    """The bootloader env at the running root (with its boot files), synced, before the write; verified."""
    dev, sw = probe_switch(session, listed=True)
    plan = plan_point_at_running(dev, sw, extra_keep=extra_keep)
    apply_ops(session, plan.ops, what="pointing the bootloader env at the running root")
    after = probe(session)
    env = boot_state(after)
    if env.root_part != after.active_index or env.upgrade_available:
        raise DeviceError(f"the bootloader env still names {after.root_label(env.root_part)} (upgrade_available={int(env.upgrade_available)}) "
                          f"after pointing it at the running root {after.active_label}; {after.inactive_label} was not written")


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_TOGETHER = [["registry_username", "registry_password"]]

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        catalog = open_catalog(args)
        rargs = RootfsArgs.from_args(args)
        cache_probe = ExportWriter().cache_probe(rargs.cache_dir)
        state = probe(session, cache_probe.script, **cache_probe.params)
        target = resolve_target(rargs.release, catalog, state)
        writer = writer_for(state, args["writer"])
        if isinstance(writer, HostappWriter):
            return self._hostapp(args, session, writer, target, catalog, state)
        cache = writer.cache_state(rargs.cache_dir, state.extra)
        plan = decide_rootfs(rargs, target, catalog, state, cache, assume_staged=self.check_mode)
        if plan.done:
            return StepResult(data=dict(stamped(state), writer=writer.name))
        diff = {"before": stamp_summary(state.inactive_stamp), "after": stamp_summary(plan.stamp)}
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, diff=diff,
                              data=dict(stamped(state), mode=plan.mode or None, source=plan.stamp.get("source") or stamped(state)["source"],
                                        writer=writer.name))
        if plan.point_env_first:
            point_env_at_running(session, rargs.extra_keep)
        script = writer.write_script(plan)
        written = session.run_json(script.script, what=f"writing {plan.label}", **script.params)
        after = probe(session)
        stamp = after.inactive_stamp or {}
        if stamp.get("digest") != target.release.digest or not after.inactive_mounted:
            raise DeviceError(
                f"{plan.label} is not stamped with {target.release.digest} after writing it (stamp: {stamp_summary(after.inactive_stamp)})"
            )
        # write_root.sh stamps the root only when its listing has the catalog's sha256 (when it gives one)
        listing = written.get("listing") if plan.listing is not None and isinstance(written.get("listing"), dict) else None
        diff["after"] = stamp_summary(stamp)
        return StepResult(changed=True, actions=plan.actions, diff=diff,
                          data={"partition": plan.label, "stamp": stamp, "mode": plan.mode, "source": stamp.get("source"),
                                "listing_verified": plan.listing is not None, "listing": listing if plan.listing is not None else None,
                                "writer": writer.name, "bytes": 0, "attempts": []})

    def _hostapp(self, args: dict[str, t.Any], session: DeviceSession, writer: HostappWriter, target: Target, catalog: Catalog,
                 state: DeviceState) -> StepResult:
        """A balenaOS device: the device's own hostapp-update writes the partition (steps/hostapp.py)."""
        auth = registry_auth(args, target)
        running = HostappJob.from_output(state.hostapp_job) if state.hostapp_job else None
        push, saved = self._saved_image(args, session, writer, target) if args["hostapp_transport"] == TRANSPORT_PUSH else (None, False)
        plan = decide_hostapp_write(target, catalog, state, args["sources"], running, push=push, saved=saved or self.check_mode)
        base = dict(stamped(state), writer=writer.name)
        if plan.done:
            return StepResult(data=base)
        diff = {"before": stamp_summary(state.inactive_stamp), "after": stamp_summary(plan.stamp)}
        first = plan.attempts[0]
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, diff=diff,
                              data=dict(base, mode=MODE_HOSTAPP, source=first.kind, bytes=0 if first.file else first.size or 0,
                                        attempts=[a.as_dict() for a in plan.attempts]))
        # from here on hostapp-update may run, and its new OS's hooks arm the env: a failed result says
        # so (acted; the role's rescue words a device it cannot read after that as booting either OS)
        self.note_failure(acted=True)
        # should the controller go away from here on, the run's watchdog puts the env back with the
        # running OS's hooks (it waits for the job)
        watchdog.store_disarm_hooks(session, session.run_id)
        wait = hostapp_wait_seconds(session.exec_timeout)
        deadline = time.monotonic() + int(args["write_timeout"])
        tried: list[dict[str, t.Any]] = []
        for attempt in plan.attempts:
            if plan.adopt:
                job = running or HostappJob("gone")
            else:
                with login_refusal():
                    job = HostappJob.from_output(_run(session, writer.start_script(plan, attempt, wait, target.insecure, auth),
                                                      what=f"hostapp-update of {plan.label}"))
            while job.running and time.monotonic() < deadline:
                job = HostappJob.from_output(_run(session, writer.wait_script(wait), what="waiting for hostapp-update"))
            if job.running:
                raise DeviceError(f"hostapp-update of {attempt.ref} still runs after write_timeout ({args['write_timeout']} s); it goes on on the "
                                  f"device: run again to wait for it", attempts=tried + [dict(attempt.as_dict(), ok=False, error="still running")])
            after = probe(session)
            verdict = judge_job(job, after, plan.image_id)
            if verdict == JOB_WRITTEN:
                stamp = _run(session, writer.stamp_script(plan, attempt.kind), what=f"stamping {plan.label}")
                tried.append(dict(attempt.as_dict(), ok=True))
                diff["after"] = stamp_summary(stamp)
                actions = list(plan.actions)
                if len(tried) > 1:
                    actions.insert(0, describe_attempt_errors(tried[:-1], "failed first"))
                if attempt.file:
                    # the saved image did its work: the partition is stamped; a later rewrite gets a new copy from the fetch
                    _run(session, writer.image_drop_script(args["hostapp_image_dir"], attempt.file.rsplit("/", 1)[-1]),
                         what=f"removing {attempt.file}")
                    if not plan.adopt:
                        actions.append(f"hostapp-update -f loaded {target.release.version} from the saved image {attempt.file} "
                                       f"({attempt.size or 0} bytes, sent by the fetch step)")
                    actions.append(f"removed the saved image {attempt.file}")
                elif not plan.adopt:
                    actions.append(f"hostapp-update pulled {target.release.version} from {attempt.kind} ({attempt.ref}): {attempt.size or 0} bytes")
                return StepResult(changed=True, actions=actions, diff=diff,
                                  data={"partition": plan.label, "stamp": stamp, "mode": MODE_HOSTAPP, "source": attempt.kind,
                                        "listing_verified": None, "listing": None, "writer": writer.name,
                                        "bytes": 0 if attempt.file else attempt.size or 0, "attempts": tried})
            error = job_failure_text(attempt, job)
            tried.append(dict(attempt.as_dict(), ok=False, error=error))
            if verdict == JOB_HOOKS_FAILED:
                raise DeviceError(f"hostapp-update wrote {target.release.version} into {plan.label} but failed after that (its hooks; "
                                  f"hostapp-update then ran the running OS's hooks to put the boot files and env back): {error}",
                                  attempts=tried)
            if verdict == JOB_WRONG:
                held = after.inactive_hostapp.image_id if after.inactive_hostapp else "none"
                raise DeviceError(f"hostapp-update of {attempt.ref} ended well but {plan.label}'s hostapp is image {held or 'none'}, not "
                                  f"{plan.image_id}; not stamping it", attempts=tried)
        raise DeviceError(describe_attempt_errors(tried), attempts=tried)

    @staticmethod
    def _saved_image(args: dict[str, t.Any], session: DeviceSession, writer: HostappWriter, target: Target) -> tuple[HostappAttempt, bool]:
        """The push transport: the hostapp-update -f attempt of the saved image the fetch step left
        on the device (checked again by scripts/hostapp_write.sh before it loads), and whether it is there."""
        release = target.release
        problem = image_dir_problem(args["hostapp_image_dir"])
        if problem:
            raise PlanError(problem)
        if not release.image_id:
            raise PlanError(f"the catalog gives no image_id for {release.device_type} {release.version}: the push transport checks the "
                            f"saved image by its image id (osfleet.hup.catalog records it)")
        name = archive_name(release.image_id)
        path = f"{args['hostapp_image_dir'].rstrip('/')}/{name}"
        images = DeviceImages.from_output(_run(session, writer.image_probe_script(args["hostapp_image_dir"], name), what="saved images"))
        meta = images.meta
        attempt = HostappAttempt(kind=str(meta.get("kind") or "registry"), ref=str(meta.get("ref") or ""),
                                 digest=release.digest, size=images.size, file=path)
        return attempt, images.size is not None


def _run(session: DeviceSession, call: Call, what: str) -> dict[str, t.Any]:
    return session.run_json(call.script, what=what, **call.params)


def hostapp_wait_seconds(exec_timeout: int | None) -> int:
    """How long one waiting call may block on the device: well within the exec_timeout."""
    return device_wait_seconds(exec_timeout, HOSTAPP_WAIT)
