# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The rehearsals' evidence on the controller, beside the rollouts' state directories::

    $XDG_STATE_HOME/osfleet-hup/rollouts/<id>/            a rollout (plugin_utils.rollout_store)
    $XDG_STATE_HOME/osfleet-hup/rehearsals/<pair_id>/<run_id>.json|.md|.html   one record per rehearsal and pair

(``hup_rehearsal_dir`` moves the second; the rollout reads the same default, so it finds the
evidence with no more options.) The drills of a rehearsal keep what they know of a bench device
that did not answer in its work directory, ``<work_dir>/<device>/down.json`` (:func:`save_down_note`).
Every file is written atomically (plugin_utils.localfile).
The decisions are :mod:`.rehearsal`'s and :mod:`.rehearsal_gate`'s, the pages :mod:`.rehearsal_render`'s.
"""

from __future__ import annotations

import json
import os
import typing as t
import urllib.parse

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_gate
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_render
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import load_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError
from ansible_collections.osfleet.hup.plugins.plugin_utils.localfile import write_atomic
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import parse_version


def default_dir() -> str:
    """``$XDG_STATE_HOME/osfleet-hup/rehearsals`` (``~/.local/state/...`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "osfleet-hup", "rehearsals")


def _name(text: str) -> str:
    return urllib.parse.quote(text, safe="._-")


def record_paths(root: str, record: t.Mapping[str, t.Any]) -> dict[str, str]:
    base = os.path.join(root, _name(record["pair_id"]), _name(record["run_id"]))
    return {"json": base + ".json", "md": base + ".md", "html": base + ".html"}


def save(root: str, record: t.Mapping[str, t.Any]) -> dict[str, str]:
    """Write the record as JSON, Markdown and HTML; returns the paths."""
    paths = record_paths(root, record)
    os.makedirs(os.path.dirname(paths["json"]), mode=0o755, exist_ok=True)
    write_atomic(paths["json"], json.dumps(record, indent=1, sort_keys=True) + "\n", rh.RehearsalError)
    write_atomic(paths["md"], rehearsal_render.to_markdown(record), rh.RehearsalError)
    write_atomic(paths["html"], rehearsal_render.to_html(record), rh.RehearsalError)
    return paths


def records(root: str) -> list[dict[str, t.Any]]:
    """Every evidence record under ``root`` (an unreadable one raises, naming it)."""
    out: list[dict[str, t.Any]] = []
    if not os.path.isdir(root):
        return out
    for pair_dir in sorted(os.listdir(root)):
        full = os.path.join(root, pair_dir)
        if not os.path.isdir(full):
            continue
        for name in sorted(os.listdir(full)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(full, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    data = json.load(handle)
            except (OSError, ValueError) as exc:
                raise rh.RehearsalError(f"cannot read the rehearsal record {path}: {exc}") from None
            if isinstance(data, dict) and data.get("kind") == "osfleet.hup.rehearsal":
                out.append(data)
    return out


def down_note_path(work_dir: str, host: str) -> str:
    """Where the drills of a rehearsal keep what they know of the bench device ``host`` that did not
    answer (:func:`.rehearsal.down_note`): ``<work_dir>/<host>/down.json``."""
    return os.path.join(os.path.abspath(work_dir), host, "down.json")


def load_down_note(path: str) -> t.Any:
    """The note at ``path`` as written, None when there is none or it cannot be read
    (:func:`.rehearsal.known_down` judges what it says)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def save_down_note(path: str, note: t.Mapping[str, t.Any] | None) -> None:
    """What a drill knew of the device at its end, for the next drills of the device: ``note``, or
    no file when None (the device answered)."""
    if note is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps(dict(note), sort_keys=True) + "\n", rh.RehearsalError)


def target_digests(catalog: str, device_types: t.Iterable[str], target_version: str, *, sha256: str | None = None,
                   allow_http: bool = False) -> dict[str, str | None]:
    """Device type -> the catalog digest of its release ``target_version`` (None: no such release)."""
    cat = load_catalog(catalog, sha256=sha256 or None, allow_http=allow_http)
    wanted = parse_version(target_version)
    out: dict[str, str | None] = {}
    for device_type in sorted(set(device_types)):
        entry = next((r for r in cat.data.get("releases") or [] if isinstance(r, dict) and r.get("device_type") == device_type
                      and _parsed(r.get("version")) == wanted), None)
        out[device_type] = rh.catalog_digest(entry, cat.data.get("registries")) if entry else None
    return out


def _parsed(version: t.Any) -> t.Any:
    try:
        return parse_version(str(version))
    except ValueError:
        return None


def rollout_gate(spec: t.Mapping[str, t.Any] | None, target_version: str, devices: t.Mapping[str, t.Mapping[str, t.Any]], now: float,
                 started: bool = False) -> rehearsal_gate.Gate | None:
    """The rollout's gate (module osfleet.hup.rollout, option ``rehearsal``) for ``devices`` (the
    ones not done; each with its ``device_type``, ``version``, ``catalog``, or ``error``): None when
    no check was asked for (no requirement and no device read)."""
    spec = spec or {}
    req = rehearsal_gate.parse_requirement(spec.get("require"))
    if not req.required and not spec.get("devices"):
        return None
    wanted: dict[tuple[str, str, bool], set[str]] = {}
    for info in devices.values():
        if info and info.get("device_type") and not info.get("error"):
            source = str(info.get("catalog") or spec.get("catalog") or "")
            if not source:
                raise rh.RehearsalError("the rehearsal gate needs the catalog (hup_catalog) to know the target release's digest")
            key = (source, str(info.get("catalog_sha256") or ""), bool(info.get("catalog_allow_http")))
            wanted.setdefault(key, set()).add(str(info["device_type"]))
    by_catalog: dict[tuple[str, str, bool], dict[str, str | None]] = {}
    for key, types in wanted.items():
        try:
            by_catalog[key] = target_digests(key[0], types, target_version, sha256=key[1], allow_http=key[2])
        except CatalogError as exc:
            raise rh.RehearsalError(f"the rehearsal gate cannot read the catalog: {exc}") from None
    digests = {}
    for host, info in devices.items():
        if info and info.get("device_type") and not info.get("error"):
            key = (str(info.get("catalog") or spec.get("catalog") or ""), str(info.get("catalog_sha256") or ""), bool(info.get("catalog_allow_http")))
            digests[host] = by_catalog[key].get(str(info["device_type"]))
    return rehearsal_gate.decide_gate(req, devices, target_version, digests, records(str(spec.get("dir") or default_dir())), now, started)


def gate_rollout(spec: t.Mapping[str, t.Any] | None, plan: t.Mapping[str, t.Any], records: t.Mapping[str, t.Mapping[str, t.Any]],
                 dry: bool, now: float, action: str = "run", started: bool = False) -> tuple[dict[str, t.Any] | None, list[str]]:
    """The rollout's start (osfleet.hup.rollout phase start): the gate for the plan's devices that
    are not done, as data and lines for the plan; raises RolloutError (naming the missing pairs)
    when the rollout requires evidence, a pair has none, and this is no dry run (--check, plan).
    An abort is never gated, nor a revert (back to the release each device ran before);
    ``started``: a wave of the rollout started already (:func:`.rehearsal_gate.decide_gate`)."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import DONE, RolloutError  # pylint: disable=import-outside-toplevel

    if action in ("abort", "revert"):
        return None, []
    read = dict((spec or {}).get("devices") or {})
    devices = {h: read.get(h) or {"error": "not read at the start (outside --limit, or unreachable)"}
               for h in plan["fleet"] if (records.get(h) or {}).get("status") not in DONE}
    try:
        gate = rollout_gate(spec, str(plan["target_version"]), devices, now, started)
    except rh.RehearsalError as exc:
        raise RolloutError(str(exc)) from None
    if gate is None:
        return None, []
    if not gate.ok and not dry:
        raise RolloutError(f"rollout {plan['id']} refused to start: {gate.reason}")
    passing = sum(p.status == "passed" for p in gate.pairs)
    lines = gate.lines() + [f"rehearsal gate: {gate.reason}" if gate.required
                            else f"rehearsal evidence (not required): {passing} of {len(gate.pairs)} pair(s) with a passing rehearsal"]
    if not gate.ok:
        lines[-1] += " (a real run refuses to start)"
    return gate.as_dict(), lines
