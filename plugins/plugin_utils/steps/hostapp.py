# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The hostapp writer's decisions (a balenaOS device, DESIGN §3, hostapp-facts §1-§3).

On a balenaOS device the spare root partition holds a hostapp that only the device's own
``hostapp-update`` writes: it pulls the image through the ``balena-host`` engine (a delta is
applied on the active partition's image), creates the container, points ``current`` at it and runs
the NEW OS's hooks, which copy the boot files and arm the bootloader. So the fetch step transfers
nothing ahead (a pull into the inactive engine would be wiped by ``hostapp-update`` itself); the
rootfs step runs ``hostapp-update -i REF`` for the first source that works, detached from the SSH
session (scripts/hostapp_write.sh), attaches to one an earlier run started, verifies the new
hostapp by its image id and stamps the partition.

Pure functions: plans from the catalog and the probe, and what a finished ``hostapp-update``
means (:func:`judge_job`).
"""

from __future__ import annotations

import posixpath
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import wanted_images
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import KIND_DELTA, Catalog, Source, sources_for
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import Target, inactive_is_target, root_space_problem

WRITER_AUTO = "auto"
WRITER_HOSTAPP = "hostapp"
WRITER_EXPORT = "export"
WRITERS = (WRITER_AUTO, WRITER_HOSTAPP, WRITER_EXPORT)

#: the rootfs step's RV(mode) for a partition that hostapp-update wrote
MODE_HOSTAPP = "hostapp"


def choose_writer(state: DeviceState, forced: str = WRITER_AUTO) -> str:
    """``hostapp`` on a balenaOS device (its running root holds a hostapp), else ``export``; a
    ``forced`` writer wins, but the hostapp writer needs the device's ``hostapp-update``."""
    if forced not in WRITERS:
        raise PlanError(f"writer must be one of {', '.join(WRITERS)}, got {forced!r}")
    chosen = forced if forced != WRITER_AUTO else (WRITER_HOSTAPP if state.hostapp else WRITER_EXPORT)
    if chosen == WRITER_HOSTAPP and not state.hostapp_update:
        why = "its root holds a hostapp" if state.hostapp else "the writer was forced to hostapp"
        raise PlanError(f"{why}, but the device has no hostapp-update on its PATH: it cannot write a hostapp")
    return chosen


@dataclass(frozen=True)
class HostappAttempt:
    """One ``hostapp-update -i REF``: the source kind, the by-digest reference, and what it pulls
    (the catalog's size; None when the catalog does not say)."""

    kind: str
    ref: str
    digest: str
    size: int | None = None
    #: push transport: the saved image on the device that ``hostapp-update -f`` loads (ref: where
    #: the controller got it)
    file: str = ""

    @property
    def flag(self) -> str:
        return "-f" if self.file else "-i"

    @property
    def job_image(self) -> str:
        """What the detached job records as its image (scripts/hostapp_write.sh): the file or the reference."""
        return self.file or self.ref

    def as_dict(self) -> dict[str, t.Any]:
        out = {"kind": self.kind, "ref": self.ref, "digest": self.digest, "bytes": self.size}
        if self.file:
            out["file"] = self.file
        return out


@dataclass(frozen=True)
class HostappJob:
    """Where the detached ``hostapp-update`` stands (scripts/_lib.sh ``osfleet_hostapp_wait``)."""

    state: str
    how: str = ""
    status: int | None = None
    image: str = ""
    flag: str = ""
    log: str = ""

    @classmethod
    def from_output(cls, out: t.Mapping[str, t.Any]) -> HostappJob:
        status = out.get("status")
        return cls(
            state=str(out.get("state", "gone")),
            how=str(out.get("how", "")),
            status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            image=str(out.get("image", "")),
            flag=str(out.get("flag", "")),
            log=str(out.get("log", "")),
        )

    @property
    def running(self) -> bool:
        return self.state == "running"

    def log_tail(self, lines: int = 6) -> str:
        kept = [line for line in self.log.splitlines() if line.strip()][-lines:]
        return " | ".join(kept)[-600:]


@dataclass
class HostappPlan:
    done: bool
    label: str
    dev: str
    attempts: list[HostappAttempt] = field(default_factory=list)
    stamp: dict[str, t.Any] = field(default_factory=dict)
    image_id: str = ""
    actions: list[str] = field(default_factory=list)
    #: an earlier run's hostapp-update ended well: only verify and stamp (attempts holds its source)
    adopt: bool = False


def hostapp_attempts(target: Target, catalog: Catalog, state: DeviceState, sources: t.Sequence[str]) -> list[HostappAttempt]:
    """The references ``hostapp-update -i`` pulls, in the user's order of ``sources`` (a delta only
    from the running release); PlanError when none applies."""
    release = target.release
    wanted = wanted_images(target, catalog, state)
    try:
        available = sources_for(release, wanted.delta_from, target.registries)
    except CatalogError as exc:
        raise PlanError(str(exc)) from None
    by_kind = {s.kind: s for s in available}
    attempts = [HostappAttempt(kind, by_kind[kind].ref, by_kind[kind].digest, by_kind[kind].size) for kind in sources if kind in by_kind]
    if not attempts:
        raise PlanError(f"none of the sources {', '.join(sources)} is available for {release.version} "
                        f"(available: {', '.join(s.kind for s in available)})")
    return attempts


def _finished_job(target: Target, catalog: Catalog, state: DeviceState, sources: t.Sequence[str],
                  job: HostappJob | None, push: HostappAttempt | None = None) -> HostappAttempt | None:
    """The attempt whose hostapp-update (started by an earlier run, since this boot) ended with exit
    0 and left the target hostapp, armed by its hooks; None otherwise."""
    if job is None or job.state != "done" or job.status != 0 or not target.release.image_id:
        return None
    held = state.inactive_hostapp
    if held is None or held.image_id != target.release.image_id:
        return None
    env = boot_state(state)
    if env.root_part != state.inactive_index or not env.upgrade_available:
        return None
    try:
        attempts = [push] if push is not None else hostapp_attempts(target, catalog, state, sources)
    except PlanError:
        return None
    return next((a for a in attempts if a.job_image == job.image), None)


def _bytes(size: int | None) -> str:
    return f"{size} bytes" if size else "size unknown"


def describe_attempts(version: str, attempts: t.Sequence[HostappAttempt]) -> str:
    first, rest = attempts[0], attempts[1:]
    if first.file:
        return (f"hostapp-update -f {first.file} loads {version} (the saved image the controller got from {first.kind} ({first.ref}) "
                f"and sent, {_bytes(first.size)}) into the balena-host engine")
    text = f"hostapp-update -i {first.ref} pulls {version} ({first.kind}, {_bytes(first.size)}) through the balena-host engine"
    if rest:
        text += "; if that fails: " + ", ".join(f"{a.kind} ({a.ref}, {_bytes(a.size)})" for a in rest)
    return text


def decide_hostapp_write(target: Target, catalog: Catalog, state: DeviceState, sources: t.Sequence[str],
                         running: HostappJob | None = None, push: HostappAttempt | None = None,
                         saved: bool = True) -> HostappPlan:
    """The rootfs step on a hostapp device: nothing when the inactive partition's hostapp is the
    target (stamp and image id) and the bootloader is armed for it (the new OS's hooks ran), else
    the ``hostapp-update -i`` attempts (a job an earlier run started for one of them first, to
    attach to it), or with the push transport the one ``hostapp-update -f`` of ``push`` (``saved``:
    the fetch left it on the device). PlanError when it cannot be written."""
    release = target.release
    plan = HostappPlan(done=False, label=state.inactive_label, dev=state.inactive_dev)
    env = boot_state(state)
    staged = inactive_is_target(target, state)
    if staged and env.root_part == state.inactive_index and env.upgrade_available:
        # written, verified, and the new OS's hooks armed the bootloader for it
        plan.done = True
        plan.stamp = dict(state.inactive_stamp or {})
        return plan
    finished = _finished_job(target, catalog, state, sources, running, push)
    if finished is not None and not staged:
        # an earlier run's hostapp-update ended well after that run was gone (killed, link lost):
        # the partition holds the target and the new OS's hooks armed it; verify and stamp it
        plan.attempts = [finished]
        plan.adopt = True
        plan.image_id = release.image_id or ""
        plan.stamp = {"device_type": target.device_type, "version": release.version, "digest": release.digest, "source": finished.kind,
                      "image_id": plan.image_id, "writer": WRITER_HOSTAPP}
        plan.actions.append(f"took over the hostapp-update of {finished.job_image} that an earlier run started and that ended well; "
                            f"verified that the new hostapp of {plan.label} is image {plan.image_id[:19]}... and stamped it ({release.digest})")
        return plan
    if staged:
        # the hooks' work was undone since (a rescue or the watchdog ran the running OS's hooks):
        # only hostapp-update runs the new OS's hooks again
        plan.actions.append(f"{plan.label} held {release.version} already, but the bootloader is not armed for it (the new OS's hooks "
                            f"were undone): wrote it again so that its hooks run")
    if not release.image_id:
        raise PlanError(f"the catalog gives no image_id for {release.device_type} {release.version}: a hostapp that hostapp-update "
                        f"writes is recognised by its image id, so it cannot be verified (osfleet.hup.catalog records it)")
    if not state.inactive_dev or state.inactive_dev == state.active_dev:
        raise PlanError(f"refusing to write {state.inactive_label or 'the inactive root'}: it resolves to the running root ({state.active_dev})")
    if not state.inactive_mounted:
        raise PlanError(f"{state.inactive_label} is not mounted at /mnt/sysroot/inactive, where hostapp-update writes the new hostapp")
    problem = root_space_problem(release, state)
    if problem:
        raise PlanError(problem)
    if env.root_part == state.active_index and env.upgrade_available:
        raise PlanError(
            f"refusing to write {state.inactive_label}: the device booted {state.active_label} with upgrade_available=1 (not committed), "
            f"so {state.inactive_label} is the root the bootloader falls back to; commit or roll back first")
    if env.root_part == state.inactive_index:
        raise PlanError(
            f"refusing to write {state.inactive_label}: the bootloader env names it as the root to boot; put the env back for the running "
            f"root first (osfleet.hup.bootenv state=rolled_back runs the running OS's hooks)")
    if push is not None and not saved:
        raise PlanError(f"the saved image of {release.version} is not on the device ({push.file}): with hostapp_transport=push, "
                        f"osfleet.hup.fetch sends it first")
    attempts = [push] if push is not None else hostapp_attempts(target, catalog, state, sources)
    if running is not None and running.running:
        mine = [a for a in attempts if a.job_image == running.image]
        if not mine:
            raise PlanError(f"a hostapp-update of {running.image or '?'} started by an earlier run still runs on the device; "
                            f"run again when it has ended")
        attempts = mine + [a for a in attempts if a.job_image != running.image]
        plan.actions.append(f"attached to the hostapp-update of {running.image} that an earlier run started")
    plan.attempts = attempts
    plan.image_id = release.image_id
    plan.stamp = {"device_type": target.device_type, "version": release.version, "digest": release.digest, "source": attempts[0].kind,
                  "image_id": release.image_id, "writer": WRITER_HOSTAPP}
    plan.actions.append(f"wrote {release.version} into {plan.label} with the device's own hostapp-update: " + describe_attempts(release.version, attempts)
                        + "; the new OS's hooks copy the boot files and arm the bootloader")
    plan.actions.append(f"verified that the new hostapp of {plan.label} is image {release.image_id[:19]}... and stamped it ({release.digest})")
    return plan


#: what a finished hostapp-update attempt means for the next step
JOB_WRITTEN = "written"       # exit 0, the partition holds the target image: stamp it
JOB_RETRY = "retry"           # the pull (or load) failed before anything was created: the next source may work
JOB_HOOKS_FAILED = "hooks"    # the image is on the partition but hostapp-update failed after it (the hooks)
JOB_WRONG = "wrong"           # exit 0 but the partition's hostapp is not the target image


def judge_job(job: HostappJob, after: DeviceState, image_id: str) -> str:
    """Judge an attempt that ended (its job and the probe after it)."""
    held = after.inactive_hostapp
    has_target = held is not None and held.image_id == image_id
    if job.state == "done" and job.status == 0:
        return JOB_WRITTEN if has_target else JOB_WRONG
    return JOB_HOOKS_FAILED if has_target else JOB_RETRY


def job_failure_text(attempt: HostappAttempt, job: HostappJob) -> str:
    how = f"exit {job.status}" if job.state == "done" else "it ended without an exit status (killed?)"
    tail = job.log_tail()
    return f"{attempt.kind} ({attempt.ref}): hostapp-update failed ({how})" + (f": {tail}" if tail else "")


def hostapp_fetch_actions(version: str, attempts: t.Sequence[HostappAttempt]) -> list[str]:
    """The fetch step on a hostapp device transfers nothing ahead: what the rootfs step then pulls."""
    return [f"fetched nothing ahead: on a balenaOS device the rootfs step's hostapp-update pulls the image itself ({describe_attempts(version, attempts)})"]


def delta_first(attempts: t.Sequence[HostappAttempt]) -> bool:
    return bool(attempts) and attempts[0].kind == KIND_DELTA


# --- the push transport: a saved image streamed from the controller, loaded with hostapp-update -f ---

TRANSPORT_PULL = "pull"
TRANSPORT_PUSH = "push"
TRANSPORTS = (TRANSPORT_PULL, TRANSPORT_PUSH)
#: where the saved images live on the device (option hostapp_image_dir)
IMAGE_DIR = "/mnt/data/osfleet/hostapp-images"
#: the bytes of one streamed chunk (one exec round trip)
CHUNK_BYTES = 16 * 1024 * 1024
#: free space kept on the data partition besides the archive and hostapp-update's load tmp
SPACE_MARGIN = 16 * 1024 * 1024
_DATA = "/mnt/data"
#: hostapp-update -f deletes this directory after the load; the engine of the apps lives in docker
_NOT_UNDER = ("/mnt/data/resin-data", "/mnt/data/docker", "/mnt/data/balena-engine")


def image_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot hold the saved images on the device (None: it can): a directory of its
    own under /mnt/data, outside what hostapp-update deletes and the app engine's data root."""
    if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or not path.startswith(_DATA + "/"):
        return f"hostapp_image_dir must be a normalised absolute path under {_DATA}/ on the device, got {path!r}"
    norm = path.rstrip("/")
    for bad in _NOT_UNDER:
        if norm == bad or norm.startswith(bad + "/"):
            return (f"hostapp_image_dir {path} is under {bad}, which hostapp-update or the engine owns "
                    f"(hostapp-update -f deletes /mnt/data/resin-data/tmp after loading)")
    return None


def push_sources(target: Target, sources: t.Sequence[str]) -> list[Source]:
    """The registries the controller gets the full image from, in the user's order: a delta does not
    apply to the push transport (a balena delta is rebuilt by the device's engine on its own base),
    so push always sends the full image."""
    release = target.release
    try:
        available = sources_for(release, None, target.registries)
    except CatalogError as exc:
        raise PlanError(str(exc)) from None
    by_kind = {s.kind: s for s in available}
    chosen = [by_kind[kind] for kind in sources if kind in by_kind]
    if not chosen:
        raise PlanError(f"none of the sources {', '.join(sources)} gives the full image of {release.version}, which the push transport sends "
                        f"(a delta does not apply to it; available: {', '.join(s.kind for s in available)})")
    return chosen


@dataclass(frozen=True)
class DeviceImages:
    """The device's saved-image dir as scripts/hostapp_image_probe.sh reports it."""

    exists: bool = False
    mount_point: bool = False
    size: int | None = None
    part_size: int | None = None
    meta: dict[str, t.Any] = field(default_factory=dict)
    free_kib: int = 0
    others: tuple[str, ...] = ()

    @classmethod
    def from_output(cls, out: t.Mapping[str, t.Any]) -> DeviceImages:
        def num(key: str) -> int | None:
            value = out.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        meta = out.get("meta")
        return cls(exists=out.get("exists") is True, mount_point=out.get("mount_point") is True, size=num("size"), part_size=num("part_size"),
                   meta=dict(meta) if isinstance(meta, dict) else {}, free_kib=num("free_kib") or 0,
                   others=tuple(str(o) for o in out.get("others") or []))


@dataclass(frozen=True)
class PushSend:
    """What the fetch step streams: from ``offset`` (a partial copy of this very archive is resumed)
    to ``size``."""

    offset: int
    size: int

    @property
    def remaining(self) -> int:
        return self.size - self.offset

    def chunks(self, chunk: int = CHUNK_BYTES) -> list[tuple[int, int]]:
        """(offset, length) of each exec round trip."""
        return [(off, min(chunk, self.size - off)) for off in range(self.offset, self.size, chunk)]


def push_space_needed(remaining: int, size: int) -> int:
    """Bytes the data partition must have free: what is left to send, and as much again for
    hostapp-update -f's load (the engine unpacks the archive in /mnt/data/resin-data/tmp), and a margin."""
    return remaining + size + SPACE_MARGIN


def decide_push_send(dir_path: str, size: int, images: DeviceImages) -> PushSend:
    """Where the send starts (a partial copy of this archive no larger than it is resumed) and
    whether the data partition has room; PlanError otherwise."""
    if images.mount_point:
        raise PlanError(f"hostapp_image_dir {dir_path} is a mount point; it must be a directory of its own on the data partition")
    offset = images.part_size if images.part_size is not None and 0 <= images.part_size <= size else 0
    send = PushSend(offset=offset, size=size)
    # a partial copy larger than the archive is removed by the first chunk (offset 0): its bytes come back
    reclaim = images.part_size if images.part_size is not None and offset == 0 else 0
    needed = push_space_needed(send.remaining, size)
    free = images.free_kib * 1024 + reclaim
    if free < needed:
        raise PlanError(f"the data partition has {free // (1024 * 1024)} MiB free for {dir_path}, the saved image needs "
                        f"{needed // (1024 * 1024)} MiB ({send.remaining} bytes to send, as much again for hostapp-update -f's load, "
                        f"and {SPACE_MARGIN // (1024 * 1024)} MiB kept free)")
    return send


def push_estimate(release_size_unpacked: int | None, release_size: int | None, cached_size: int | None) -> int:
    """Check mode's bytes of a send: the archive's size when the controller holds it, else the
    catalog's unpacked size (the archive holds the layers uncompressed), else its packed size."""
    return cached_size or release_size_unpacked or release_size or 0


def push_fetch_actions(version: str, source: Source, path: str, send: PushSend | None, size: int, downloaded: bool,
                       controller_dir: str) -> list[str]:
    """What the fetch step's push did (or would do: ``send`` None in check mode without the sizes)."""
    got = (f"got {version} by digest from {source.kind} ({source.ref}) into {controller_dir} on the controller and verified it"
           if downloaded else f"took the saved image of {version} from {controller_dir} on the controller and verified it")
    got += " (config = image id, every layer = its diff_id)"
    if send is not None and send.offset:
        sent = f"sent the remaining {send.remaining} of its {size} bytes to {path} (resuming a partial copy of {send.offset} bytes)"
    else:
        sent = f"sent it to {path} ({size} bytes, the full image: a delta does not apply to the push transport)"
    return [got, sent, f"verified {path} on the device (config = image id, every layer = its diff_id)"]
