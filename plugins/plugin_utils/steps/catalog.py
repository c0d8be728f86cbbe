# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""osfleet.hup.catalog: the catalog document with one release added or refreshed (pure, no I/O).

Input: what the image says of itself (:class:`~..image.ImageFacts`), the options (what cannot be
read from an image: layout, disk image, deltas, the supervisor image) and the catalog document as it
is (None: no file yet). Output: the new document, already validated by the catalog reader
(:class:`~..catalog.Catalog`, the one schema check), the release entry, the plain actions.

Refresh rules: the entry of the same device type and version (compared as versions) is updated in
place; what the image says (digest, image_id, sizes, arch, supervisor_version, repository) always
wins, an option that is given replaces the old value, an option left out keeps it, and keys the
module does not know (``x-<tool>``) stay.
"""

from __future__ import annotations

import copy
import json
import typing as t
from dataclasses import dataclass, field

import yaml

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import SCHEMA_VERSION, Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.image import ImageFacts, ImageRef
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import parse_version

#: the order of a new release entry's keys (docs/internals.md §3)
RELEASE_KEYS = ("device_type", "version", "arch", "layout", "repository", "tag", "digest", "size", "image_id", "size_unpacked",
                "supervisor_version", "disk_image", "deltas")


@dataclass(frozen=True)
class CatalogArgs:
    """The options, with the references of deltas and the supervisor image already inspected."""

    path: str
    image: ImageRef
    device_type: str | None = None
    version: str | None = None
    layout: str | None = None
    disk_image: dict[str, t.Any] | None = None
    #: catalog delta entries (``from``, ``digest``, optional ``repository``/``tag``/``size``); None: keep
    deltas: list[dict[str, t.Any]] | None = None
    #: the supervisor image the release ships (``repository``, ``tag``, ``digest``, ``size``); None: none given
    supervisor: dict[str, t.Any] | None = None
    registry_insecure: bool | None = None


@dataclass
class CatalogPlan:
    document: dict[str, t.Any]
    release: dict[str, t.Any]
    supervisor: dict[str, t.Any] | None
    changed: bool
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _same_version(a: t.Any, b: str) -> bool:
    try:
        return parse_version(str(a)) == parse_version(b)
    except ValueError:
        return False


def image_version(args: CatalogArgs, facts: ImageFacts) -> str:
    """The release's version: the image's os-release ``VERSION`` (``VERSION_ID``); O(version) must agree."""
    found = facts.os_release.get("VERSION") or facts.os_release.get("VERSION_ID")
    if not found:
        raise PlanError(f"{args.image}: its /etc/os-release has no VERSION")
    try:
        parse_version(found)
    except ValueError as exc:
        raise PlanError(f"{args.image}: its /etc/os-release VERSION {found!r} is not a balenaOS version ({exc})") from None
    if args.version is not None and not _same_version(args.version, found):
        raise PlanError(f"{args.image} is balenaOS {found} (its /etc/os-release VERSION), not {args.version}")
    return found


def image_device_type(args: CatalogArgs, facts: ImageFacts) -> str:
    """O(device_type), else the image's os-release ``SLUG``; the two must agree when both are there."""
    slug = facts.os_release.get("SLUG")
    if args.device_type and slug and args.device_type != slug:
        raise PlanError(f"{args.image} is an image for {slug} (its /etc/os-release SLUG), not {args.device_type}")
    device_type = args.device_type or slug
    if not device_type:
        raise PlanError(f"{args.image}: its /etc/os-release has no SLUG; give device_type")
    return device_type


def release_entry(args: CatalogArgs, facts: ImageFacts, old: t.Mapping[str, t.Any] | None) -> dict[str, t.Any]:
    """The release entry: the old one (its key order, unknown keys) updated by the image and the options."""
    entry: dict[str, t.Any] = dict(old or {})
    read = {
        "device_type": image_device_type(args, facts),
        "version": image_version(args, facts),
        "arch": facts.arch,
        "repository": args.image.repository,
        "tag": args.image.tag or entry.get("tag"),
        "digest": facts.digest,
        "size": facts.size,
        "image_id": facts.image_id,
        "size_unpacked": facts.size_unpacked,
        "supervisor_version": facts.supervisor_version,
    }
    given = {"layout": args.layout, "disk_image": args.disk_image, "deltas": args.deltas}
    for key, value in read.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    entry.update({key: value for key, value in given.items() if value is not None})
    entry.setdefault("deltas", [])
    ordered = {key: entry[key] for key in RELEASE_KEYS if key in entry}
    return {**ordered, **{key: value for key, value in entry.items() if key not in ordered}} if old is None else entry


def _describe(entry: t.Mapping[str, t.Any]) -> str:
    return f"{entry['device_type']} {entry['version']}"


def _changes(old: t.Mapping[str, t.Any], new: t.Mapping[str, t.Any]) -> str:
    keys = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    return ", ".join(keys)


def _supervisor_entry(args: CatalogArgs, facts: ImageFacts, old: t.Mapping[str, t.Any] | None) -> dict[str, t.Any]:
    if facts.supervisor_version is None:
        raise PlanError(f"{args.image} ships no /etc/balena-supervisor/supervisor.conf, so supervisor_image has no version to be listed as")
    entry = dict(old or {})
    entry.update({"version": facts.supervisor_version, **{k: v for k, v in (args.supervisor or {}).items() if v is not None}})
    return entry


def _merge_supervisor(doc: dict[str, t.Any], args: CatalogArgs, facts: ImageFacts, actions: list[str]) -> dict[str, t.Any]:
    sups = doc.setdefault("supervisors", [])
    if not isinstance(sups, list):
        raise CatalogError(f"catalog {args.path} is invalid: supervisors: must be a list, got {type(sups).__name__}")
    repository = (args.supervisor or {}).get("repository")
    default_repo = doc.get("supervisor_repository")
    index = next((i for i, s in enumerate(sups) if isinstance(s, dict) and _same_version(s.get("version"), str(facts.supervisor_version))
                  and (s.get("repository") or default_repo) == repository), None)
    old = sups[index] if index is not None else None
    entry = _supervisor_entry(args, facts, old)
    if old is None:
        sups.append(entry)
        actions.append(f"add supervisor {entry['version']} ({entry['repository']}@{entry['digest']})")
    elif old != entry:
        sups[index] = entry
        actions.append(f"refresh supervisor {entry['version']}: {_changes(old, entry)}")
    if not default_repo:
        doc["supervisor_repository"] = repository
        actions.append(f"set supervisor_repository {repository}")
    return entry


def _new_document(args: CatalogArgs) -> dict[str, t.Any]:
    return {"schema": SCHEMA_VERSION, "registries": {"primary": args.image.registry}, "insecure_registries": bool(args.registry_insecure),
            "device_types": {}, "releases": []}


def _device_type(doc: dict[str, t.Any], entry: t.Mapping[str, t.Any], facts: ImageFacts, args: CatalogArgs, actions: list[str]) -> None:
    types = doc.setdefault("device_types", {})
    if not isinstance(types, dict):
        return  # the schema check names it
    name = entry["device_type"]
    known = types.get(name)
    if isinstance(known, dict):
        if known.get("arch") and known["arch"] != entry["arch"]:
            raise PlanError(f"{args.image} is an {entry['arch']} image, the catalog's device type {name} is {known['arch']}")
        return
    if known is None:
        types[name] = {"arch": entry["arch"], **({"machine": facts.os_release["MACHINE"]} if facts.os_release.get("MACHINE") else {})}
        actions.append(f"add device type {name} ({entry['arch']})")


def decide_catalog(args: CatalogArgs, facts: ImageFacts, existing: t.Any) -> CatalogPlan:
    """The catalog ``existing`` (None: no file yet) with the release of ``facts`` added or refreshed."""
    actions: list[str] = []
    warnings: list[str] = []
    if existing is None:
        doc = _new_document(args)
        actions.append(f"create the catalog {args.path}")
    elif not isinstance(existing, dict):
        raise CatalogError(f"catalog {args.path} is invalid: top level: must be a mapping, got {type(existing).__name__}")
    else:
        doc = copy.deepcopy(existing)
    releases = doc.setdefault("releases", [])
    if not isinstance(releases, list):
        raise CatalogError(f"catalog {args.path} is invalid: releases: must be a list, got {type(releases).__name__}")
    probe = release_entry(args, facts, None)
    index = next((i for i, r in enumerate(releases) if isinstance(r, dict) and r.get("device_type") == probe["device_type"]
                  and _same_version(r.get("version"), probe["version"])), None)
    old = releases[index] if index is not None else None
    entry = release_entry(args, facts, old) if old is not None else probe
    if old is None:
        releases.append(entry)
        actions.append(f"add release {_describe(entry)} ({entry['repository']}@{entry['digest']})")
    elif old != entry:
        releases[index] = entry
        actions.append(f"refresh release {_describe(entry)}: {_changes(old, entry)}")
    _device_type(doc, entry, facts, args, actions)
    supervisor = _merge_supervisor(doc, args, facts, actions) if args.supervisor is not None else None
    registries = doc.get("registries") if isinstance(doc.get("registries"), dict) else {}
    if registries and args.image.registry not in registries.values():
        warnings.append(f"{args.image.registry} is not one of the catalog's registries ({', '.join(sorted(map(str, registries.values())))}); "
                        f"the devices pull {entry['repository']}@{entry['digest']} from those")
    Catalog(doc, args.path)  # the collection's own schema check, raises CatalogError naming every problem
    changed = existing is None or doc != existing
    return CatalogPlan(doc, entry, supervisor, changed, actions if changed else [], warnings)


def is_yaml(path: str) -> bool:
    return path.lower().endswith((".yml", ".yaml"))


def render(document: t.Mapping[str, t.Any], path: str) -> str:
    """The catalog file's text: YAML for ``.yml``/``.yaml``, else JSON (2-space indent, keys in their order)."""
    if is_yaml(path):
        return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)
    return json.dumps(document, indent=2) + "\n"
