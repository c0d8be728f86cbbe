# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.fetch: probe the image cache, decide the sources, pull, verify."""

from __future__ import annotations

import tempfile
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.fetch import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.archive import (
    ArchiveError, ControllerCache, SavedImage, archive_name, archive_tag, default_cache_dir, image_hex,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog, Source
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.image import ImageError
from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import RegistryAuth, Skopeo, login_refusal
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import Target, inactive_is_target, open_catalog, registry_auth, resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import (
    FetchArgs, decide_fetch, describe_attempt_errors, fetch_diff, fetched_actions, fetched_result, planned_result,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.hostapp import (
    TRANSPORT_PULL, TRANSPORT_PUSH, DeviceImages, decide_push_send, hostapp_attempts, hostapp_fetch_actions, image_dir_problem, push_estimate,
    push_fetch_actions, push_sources,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.writer import ExportWriter, HostappWriter, writer_for


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_TOGETHER = [["registry_username", "registry_password"]]

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        catalog = open_catalog(args)
        fargs = FetchArgs.from_args(args)
        cache_probe = ExportWriter().cache_probe(fargs.cache_dir)
        state = probe(session, cache_probe.script, **cache_probe.params)
        target = resolve_target(fargs.release, catalog, state)
        writer = writer_for(state, args["writer"])
        auth = registry_auth(args, target)
        if isinstance(writer, HostappWriter):
            if args["hostapp_transport"] == TRANSPORT_PUSH:
                return push_fetch(args, fargs, target, state, session, writer, self.check_mode, auth)
            return hostapp_fetch(fargs, target, catalog, state, session, writer, self.check_mode, auth)
        plan = decide_fetch(fargs, target, catalog, state, writer.cache_state(fargs.cache_dir, state.extra))
        if plan.done:
            return StepResult(data=fetched_result(fargs.cache_dir, plan.cached, target.release.digest))
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, data=planned_result(plan), diff=fetch_diff(plan, target.release.version))
        script = writer.fetch_script(plan, target.insecure, auth)
        with login_refusal():
            outcome = writer.fetch_outcome(session.run_json(script.script, what="fetch", **script.params))
        if outcome.image is None:
            raise DeviceError(describe_attempt_errors(outcome.attempts), attempts=outcome.attempts)
        after = probe(session, cache_probe.script, **cache_probe.params)
        if writer.cache_state(fargs.cache_dir, after.extra).find(outcome.image.digest) is None:
            raise DeviceError(f"the fetched image {outcome.image.digest} is not in {fargs.cache_dir} after fetching it")
        actions = fetched_actions(plan, target.release.version, outcome.attempts, outcome.image)
        return StepResult(changed=True, actions=actions, diff=fetch_diff(plan, target.release.version, outcome.image),
                          data=fetched_result(fargs.cache_dir, outcome.image, outcome.image.digest, outcome.attempts))


def hostapp_fetch(fargs: FetchArgs, target: Target, catalog: Catalog, state: DeviceState, session: DeviceSession, writer: HostappWriter,
                  check_mode: bool, auth: RegistryAuth | None) -> StepResult:
    """A balenaOS device: nothing is fetched ahead (hostapp-update wipes the inactive engine before
    it pulls); the result names the source the rootfs step's hostapp-update tries first, the same in
    check mode and in a real run. With credentials the device logs in to the registries once
    (``balena login --password-stdin`` into a private directory, removed again), so that wrong
    ones fail here, before the rootfs step wipes anything; nothing is kept on the device."""
    data = dict(fetched_result(fargs.cache_dir, None, target.release.digest), writer="hostapp", transport=TRANSPORT_PULL)
    if inactive_is_target(target, state):
        return StepResult(data=data)
    attempts = hostapp_attempts(target, catalog, state, fargs.sources)
    first = attempts[0]
    data.update(source=first.kind, ref=first.ref, digest=first.digest, cached=False,
                attempts=[a.as_dict() for a in attempts])
    actions = hostapp_fetch_actions(target.release.version, attempts)
    if auth is None and not check_mode:
        # without credentials: a registry that answers with a Basic challenge wants them; when every
        # registry the pull would try does, the pull cannot work: fail before the rootfs step wipes anything
        registries = list(dict.fromkeys(a.ref.split("/", 1)[0] for a in attempts if not a.file))
        if registries:
            found = session.run_json(**_call(writer.anonymous_script(target.insecure, registries)), what="registry check")
            wants = [str(r) for r in found.get("wants") or []]
            if set(registries) <= set(wants):
                scheme = "http" if target.insecure else "https"
                which = f"the registry {registries[0]} wants" if len(registries) == 1 else f"the registries {', '.join(registries)} want"
                raise DeviceError(f"{which} credentials (HTTP 401 with a Basic challenge from {scheme}://{registries[0]}/v2/): "
                                  f"give registry_username and registry_password; nothing was changed")
    if auth is not None:
        registries = ", ".join(auth.registries)
        if check_mode:
            actions.append(f"would log in to {registries} as {auth.username} on the device to check the credentials")
        else:
            with login_refusal():
                session.run_json(**_call(writer.login_script(target.insecure, auth)), what="registry login")
            actions.append(f"logged in to {registries} as {auth.username} on the device (the credentials were not kept there)")
    return StepResult(actions=actions, data=data)


def push_fetch(args: dict[str, t.Any], fargs: FetchArgs, target: Target, state: DeviceState, session: DeviceSession,
               writer: HostappWriter, check_mode: bool, auth: RegistryAuth | None = None) -> StepResult:
    """A balenaOS device with the push transport: the controller gets the full image by digest,
    verifies it, and streams it to the device, which verifies it too (steps/hostapp.py)."""
    release = target.release
    image_dir = args["hostapp_image_dir"]
    data = dict(fetched_result(fargs.cache_dir, None, release.digest), writer="hostapp", transport=TRANSPORT_PUSH)
    if inactive_is_target(target, state):
        return StepResult(data=data)
    problem = image_dir_problem(image_dir)
    if problem:
        raise PlanError(problem)
    if not release.image_id:
        raise PlanError(f"the catalog gives no image_id for {release.device_type} {release.version}: the push transport checks the saved "
                        f"image by its image id (osfleet.hup.catalog records it)")
    sources = push_sources(target, fargs.sources)
    name = archive_name(release.image_id)
    path = f"{image_dir.rstrip('/')}/{name}"
    images = DeviceImages.from_output(session.run_json(**_call(writer.image_probe_script(image_dir, name)), what="saved images"))
    actions: list[str] = []
    if images.size is not None:
        meta = images.meta
        check = session.run_json(**_call(writer.image_check_script(image_dir, name, name, release.image_id, "", meta, remove=not check_mode)),
                                 what=f"checking {path}")
        if check.get("ok"):
            data.update(source=str(meta.get("kind") or "registry"), ref=meta.get("ref"), cached=True, saved_image=path, bytes=0,
                        attempts=[])
            return StepResult(data=data)
        actions.append(f"{'would remove' if check_mode else 'removed'} {path}, which failed verification ({check.get('why')}), "
                       f"and sent it again")
    cache = ControllerCache(args["hostapp_image_cache"] or default_cache_dir())
    first = sources[0]
    if check_mode:
        held = cache.lookup(release.image_id)
        size = push_estimate(release.size_unpacked, release.size, held.size if held else None)
        source = next((s for s in sources if held is not None and s.kind == held.kind), first)
        actions.append(f"would get {release.version} by digest from {source.kind} ({source.ref}) on the controller"
                       if held is None else f"would take the saved image of {release.version} from {cache.directory} on the controller")
        actions.append(f"would send it to {path} ({size} bytes{'' if held else ', estimated from the catalog'}; the full image: "
                       f"a delta does not apply to the push transport) and verify it there")
        data.update(source=source.kind, ref=source.ref, cached=False, saved_image=None, bytes=size,
                    attempts=[{"kind": s.kind, "ref": s.ref, "digest": s.digest, "bytes": size} for s in sources])
        return StepResult(changed=True, actions=actions, data=data, diff=_push_diff(path, release.version, images, size, source.kind))
    saved, downloaded, tried = _controller_image(cache, target, sources, auth)
    source = next(s for s in sources if s.kind == saved.kind) if any(s.kind == saved.kind for s in sources) else first
    part = f"{image_hex(release.image_id)}.{saved.sha256[len('sha256:'):][:16]}.part"
    images = DeviceImages.from_output(session.run_json(**_call(writer.image_probe_script(image_dir, name, part)), what="saved images"))
    send = decide_push_send(image_dir, saved.size, images)
    with open(saved.path, "rb") as handle:
        for offset, length in send.chunks():
            handle.seek(offset)
            session.run_with_bytes(writer.PUT_SCRIPT, handle.read(length), what=f"sending {path}", **writer.put_params(image_dir, part, offset))
    meta = saved.meta()
    check = session.run_json(**_call(writer.image_check_script(image_dir, part, name, release.image_id, saved.sha256, meta, remove=True)),
                             what=f"checking {path}")
    if not check.get("ok"):
        raise DeviceError(f"the saved image of {release.version} ({release.image_id}) that was sent to {path} failed verification on the "
                          f"device: {check.get('why')}; removed it", attempts=tried)
    actions += push_fetch_actions(release.version, source, path, send, saved.size, downloaded, cache.directory)
    data.update(source=saved.kind, ref=saved.ref, cached=False, saved_image=path, bytes=send.remaining, attempts=tried)
    return StepResult(changed=True, actions=actions, data=data, diff=_push_diff(path, release.version, images, send.remaining, saved.kind))


def _call(call: t.Any) -> dict[str, t.Any]:
    return {"script": call.script, **call.params}


def _push_diff(path: str, version: str, images: DeviceImages, size: int, kind: str) -> dict[str, str]:
    before = f"{path}: " + (f"partial copy, {images.part_size} bytes\n" if images.part_size else "no saved image\n")
    return {"before": before, "after": f"{path}: the saved image of {version} from {kind}, {size} bytes sent from the controller\n"}


def _controller_image(cache: ControllerCache, target: Target, sources: t.Sequence[Source],
                      auth: RegistryAuth | None = None) -> tuple[SavedImage, bool, list[dict[str, t.Any]]]:
    """The verified archive of the release in the controller's cache: the one there, or got by
    digest from the first source that gives it (with ``auth``: skopeo's auth file in a private
    temporary directory, removed after). PlanError (nothing sent) when none does."""
    release = target.release
    image_id = t.cast(str, release.image_id)
    tried: list[dict[str, t.Any]] = []
    with cache.locked(image_id):
        saved, problem = cache.verified(image_id)
        if saved is not None:
            return saved, False, [{"kind": saved.kind, "ref": saved.ref, "digest": saved.digest, "bytes": 0, "ok": True, "error": "",
                                   "cached": True}]
        name = archive_tag(target.registries["primary"], release.repository, release.tag or release.version)
        with tempfile.TemporaryDirectory(prefix="osfleet-auth-") as work:
            if auth is None:
                skopeo = Skopeo(tls_verify=not target.insecure)
            else:
                skopeo = Skopeo.with_credentials(work, auth.registries, auth.username, auth.password, tls_verify=not target.insecure)
            for source in sources:
                try:
                    saved = cache.add(image_id, lambda tmp, ref=source.ref: skopeo.copy_to_archive(ref, tmp, name), source.kind, source.ref,
                                      source.digest)
                except (ImageError, ArchiveError, OSError) as exc:
                    tried.append({"kind": source.kind, "ref": source.ref, "digest": source.digest, "bytes": 0, "ok": False, "error": str(exc)})
                    continue
                tried.append({"kind": source.kind, "ref": source.ref, "digest": source.digest, "bytes": saved.size, "ok": True, "error": ""})
                return saved, True, tried
    lead = "nothing was sent to the device; " + (f"the cached archive was dropped ({problem}); " if problem else "")
    raise PlanError(lead + describe_attempt_errors(tried, "the controller could not get a verified image"), attempts=tried)
