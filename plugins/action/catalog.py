# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.catalog: read the image (skopeo + plugin_utils.image), decide the
new catalog (steps.catalog), write it atomically unless in check mode, read it back."""

from __future__ import annotations

import os
import tempfile
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.catalog import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import _parse
from ansible_collections.osfleet.hup.plugins.plugin_utils.controller_action import ControllerAction
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.image import BlobStore, ImageRef, inspect_image, parse_reference
from ansible_collections.osfleet.hup.plugins.plugin_utils.localfile import write_atomic
from ansible_collections.osfleet.hup.plugins.plugin_utils.registry import Skopeo, fetch_blobs, resolve_manifest
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.catalog import CatalogArgs, decide_catalog, render


def read_text(path: str) -> str | None:
    """The catalog file's text; None when there is none."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"catalog {path} is not UTF-8 text: {exc}") from None


def _manifest_entry(skopeo: Skopeo, ref: ImageRef, arch: str | None) -> dict[str, t.Any]:
    manifest = resolve_manifest(skopeo, ref, arch)
    return {"repository": ref.repository, "tag": ref.tag, "digest": manifest.digest, "size": manifest.size}


def _delta(skopeo: Skopeo, item: dict[str, t.Any], arch: str) -> dict[str, t.Any]:
    entry: dict[str, t.Any] = {"from": item["from"]}
    if item.get("image"):
        found = _manifest_entry(skopeo, parse_reference(item["image"]), arch)
        entry.update({"repository": item.get("repository") or found["repository"], "tag": item.get("tag") or found["tag"],
                      "digest": found["digest"], "size": found["size"]})
    elif item.get("digest"):
        entry.update({k: item[k] for k in ("repository", "tag", "digest", "size") if item.get(k) is not None})
    else:
        raise PlanError(f"the delta from {item['from']} needs its image or its digest")
    return {k: v for k, v in entry.items() if v is not None}


class ActionModule(ControllerAction):
    DOCUMENTATION = DOCUMENTATION
    MUTUALLY_EXCLUSIVE = [["registry_username", "registry_auth_file"]]
    REQUIRED_TOGETHER = [["registry_username", "registry_password"]]

    def step(self, args: dict[str, t.Any]) -> StepResult:
        path = os.path.realpath(args["path"])
        ref = parse_reference(args["image"])
        before = read_text(path)
        existing = _parse(before.encode("utf-8"), path) if before is not None else None
        insecure = args["registry_insecure"]
        if insecure is None:
            insecure = bool(existing.get("insecure_registries", False)) if isinstance(existing, dict) else False
        with tempfile.TemporaryDirectory(prefix="osfleet-catalog-") as work:
            skopeo = Skopeo.with_credentials(work, ref.registry, args["registry_username"], args["registry_password"],
                                             executable=args["executable"], tls_verify=not insecure, auth_file=args["registry_auth_file"],
                                             cert_dir=args["registry_cert_dir"], timeout=args["timeout"])
            manifest = resolve_manifest(skopeo, ref, args["arch"])
            store = os.path.join(work, "image")
            facts = inspect_image(BlobStore(fetch_blobs(skopeo, ref, manifest, store)), manifest)
            if args["arch"] and facts.arch != args["arch"]:
                raise PlanError(f"{ref} is an {facts.arch} image, not {args['arch']}")
            deltas = [_delta(skopeo, item, facts.arch) for item in args["deltas"]] if args["deltas"] is not None else None
            supervisor = _manifest_entry(skopeo, parse_reference(args["supervisor_image"]), facts.arch) if args["supervisor_image"] else None
        cargs = CatalogArgs(path=path, image=ref, device_type=args["device_type"], version=args["version"], layout=args["layout"],
                            disk_image={k: v for k, v in args["disk_image"].items() if v is not None} if args["disk_image"] else None,
                            deltas=deltas, supervisor=supervisor, registry_insecure=insecure)
        plan = decide_catalog(cargs, facts, existing)
        data: dict[str, t.Any] = {"release": plan.release, "path": path}
        if plan.supervisor is not None:
            data["supervisor"] = plan.supervisor
        if plan.warnings:
            data["warnings"] = plan.warnings
        if not plan.changed:
            return StepResult(data=data)
        after = render(plan.document, path)
        diff = {"before": before or "", "after": after, "before_header": path, "after_header": path}
        if not self.check_mode:
            write_atomic(path, after, CatalogError)
            if read_text(path) != after:
                raise CatalogError(f"catalog file {path} does not hold what was written")
        return StepResult(changed=True, actions=plan.actions, diff=diff, data=data)
