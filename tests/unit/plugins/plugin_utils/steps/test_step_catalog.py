# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.catalog's decision (steps/catalog.py): the catalog with one release added or refreshed."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing as t

import pytest
import yaml

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.image import ImageFacts, parse_reference
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.catalog import CatalogArgs, decide_catalog, render

D1, D2, DD, DS = ("sha256:" + c * 64 for c in "12de")
FACTS = ImageFacts(digest=D2, image_id="sha256:" + "c" * 64, size=2000, size_unpacked=5000, arch="amd64",
                   os_release={"VERSION": "2.113.0", "SLUG": "genericx86-64-ext", "MACHINE": "genericx86-64-ext"},
                   supervisor_version="14.11.2")
REF = parse_reference("127.0.0.1:5000/osfleet/genericx86-64-ext:2.113.0")


def args(**kw: t.Any) -> CatalogArgs:
    return CatalogArgs(path="/srv/catalog.json", image=kw.pop("image", REF), **kw)


def existing() -> dict[str, t.Any]:
    return {
        "schema": 1, "registries": {"primary": "127.0.0.1:5000"}, "insecure_registries": True,
        "device_types": {"genericx86-64-ext": {"arch": "amd64"}},
        "releases": [
            {"device_type": "genericx86-64-ext", "version": "2.88.4", "repository": "osfleet/genericx86-64-ext", "digest": D1},
            {"device_type": "genericx86-64-ext", "version": "2.113.0", "arch": "amd64", "layout": "balena-gpt-v1",
             "repository": "osfleet/genericx86-64-ext", "tag": "2.113.0", "digest": D1, "size": 1, "image_id": D1,
             "size_unpacked": 1, "supervisor_version": "14.0.8",
             "deltas": [{"from": "2.88.4", "digest": DD}], "x-osfleet-lab": {"fault": None}},
        ],
    }


def test_a_new_catalog_holds_the_release() -> None:
    plan = decide_catalog(args(layout="balena-gpt-v1", registry_insecure=True), FACTS, None)
    assert plan.changed
    assert plan.document["registries"] == {"primary": "127.0.0.1:5000"} and plan.document["insecure_registries"] is True
    assert plan.release == {
        "device_type": "genericx86-64-ext", "version": "2.113.0", "arch": "amd64", "layout": "balena-gpt-v1",
        "repository": "osfleet/genericx86-64-ext", "tag": "2.113.0", "digest": D2, "size": 2000, "image_id": "sha256:" + "c" * 64,
        "size_unpacked": 5000, "supervisor_version": "14.11.2", "deltas": [],
    }
    assert plan.document["device_types"] == {"genericx86-64-ext": {"arch": "amd64", "machine": "genericx86-64-ext"}}
    assert plan.actions[0] == "create the catalog /srv/catalog.json"
    release = Catalog(plan.document).release("genericx86-64-ext", "2.113.0")
    assert (release.digest, release.size_unpacked, release.supervisor_version) == (D2, 5000, "14.11.2")


def test_a_refresh_keeps_order_other_tools_keys_and_what_no_option_gives() -> None:
    old = existing()
    plan = decide_catalog(args(), FACTS, old)
    assert old == existing(), "the input is not modified"
    entry = plan.document["releases"][1]
    assert list(entry) == list(old["releases"][1]), "the key order stays"
    assert entry["x-osfleet-lab"] == {"fault": None}
    assert entry["layout"] == "balena-gpt-v1" and entry["deltas"] == [{"from": "2.88.4", "digest": DD}]
    assert (entry["digest"], entry["size"], entry["image_id"], entry["size_unpacked"], entry["supervisor_version"]) == (
        D2, 2000, "sha256:" + "c" * 64, 5000, "14.11.2")
    assert plan.document["releases"][0] == old["releases"][0]
    assert plan.actions == ["refresh release genericx86-64-ext 2.113.0: digest, size, image_id, size_unpacked, supervisor_version"]


def test_the_same_entry_again_is_no_change() -> None:
    first = decide_catalog(args(layout="balena-gpt-v1"), FACTS, existing())
    again = decide_catalog(args(), FACTS, copy.deepcopy(first.document))
    assert not again.changed and again.actions == []
    assert again.document == first.document


def test_given_options_replace_the_old_values() -> None:
    disk = {"url": "https://x/y.img.gz", "sha256": "a" * 64, "size": 3}
    plan = decide_catalog(args(layout="l4t-r35", disk_image=disk, deltas=[]), FACTS, existing())
    entry = plan.document["releases"][1]
    assert (entry["layout"], entry["disk_image"], entry["deltas"]) == ("l4t-r35", disk, [])


def test_versions_are_compared_as_versions() -> None:
    old = existing()
    old["releases"][1]["version"] = "v2.113.0"
    plan = decide_catalog(args(), FACTS, old)
    assert len(plan.document["releases"]) == 2 and plan.document["releases"][1]["version"] == "2.113.0"


def test_the_image_must_be_what_the_options_say() -> None:
    with pytest.raises(PlanError, match=r"is balenaOS 2.113.0 \(its /etc/os-release VERSION\), not 2.114.1"):
        decide_catalog(args(version="2.114.1"), FACTS, None)
    with pytest.raises(PlanError, match=r"is an image for genericx86-64-ext \(its /etc/os-release SLUG\), not jetson-xavier"):
        decide_catalog(args(device_type="jetson-xavier"), FACTS, None)
    old = existing()
    old["device_types"]["genericx86-64-ext"]["arch"] = "aarch64"
    with pytest.raises(PlanError, match="is an amd64 image, the catalog's device type genericx86-64-ext is aarch64"):
        decide_catalog(args(), FACTS, old)


def test_an_image_that_does_not_say_enough_is_refused() -> None:
    no_slug = dataclasses.replace(FACTS, os_release={"VERSION": "2.113.0"})
    with pytest.raises(PlanError, match="has no SLUG; give device_type"):
        decide_catalog(args(), no_slug, None)
    assert decide_catalog(args(device_type="genericx86-64-ext"), no_slug, None).release["device_type"] == "genericx86-64-ext"
    with pytest.raises(PlanError, match="has no VERSION"):
        decide_catalog(args(), dataclasses.replace(FACTS, os_release={"SLUG": "x"}), None)
    with pytest.raises(PlanError, match="is not a balenaOS version"):
        decide_catalog(args(), dataclasses.replace(FACTS, os_release={"SLUG": "x", "VERSION": "latest"}), None)


def test_the_result_goes_through_the_catalog_schema() -> None:
    """The one schema check (plugin_utils.catalog) refuses what the options would make invalid, naming it."""
    with pytest.raises(CatalogError, match=r"disk_image: sha256 'XYZ' is not 64 lowercase hex digits"):
        decide_catalog(args(disk_image={"url": "https://x", "sha256": "XYZ"}), FACTS, None)
    with pytest.raises(CatalogError, match=r"deltas\[0\]: digest 'sha256:short' is not sha256"):
        decide_catalog(args(deltas=[{"from": "2.88.4", "digest": "sha256:short"}]), FACTS, None)
    broken = existing()
    broken["releases"][0]["digest"] = "nope"
    with pytest.raises(CatalogError, match=r"catalog /srv/catalog.json is invalid: releases\[0\]"):
        decide_catalog(args(), FACTS, broken)
    with pytest.raises(CatalogError, match="top level: must be a mapping"):
        decide_catalog(args(), FACTS, ["not", "a", "catalog"])


def test_the_supervisor_image_is_listed_under_the_shipped_version() -> None:
    sup = {"repository": "osfleet/balena-supervisor", "tag": "v14.11.2", "digest": DS, "size": 1662}
    plan = decide_catalog(args(supervisor=sup), FACTS, existing())
    assert plan.supervisor == {"version": "14.11.2", **sup}
    assert plan.document["supervisors"] == [plan.supervisor]
    assert plan.document["supervisor_repository"] == "osfleet/balena-supervisor"
    assert Catalog(plan.document).supervisor("14.11.2").digest == DS
    again = decide_catalog(args(supervisor=sup), FACTS, copy.deepcopy(plan.document))
    assert not again.changed
    moved = decide_catalog(args(supervisor={**sup, "digest": DD}), FACTS, copy.deepcopy(plan.document))
    assert moved.document["supervisors"] == [{**plan.supervisor, "digest": DD}]
    with pytest.raises(PlanError, match="ships no /etc/balena-supervisor/supervisor.conf"):
        decide_catalog(args(supervisor=sup), dataclasses.replace(FACTS, supervisor_version=None), None)


def test_an_image_from_another_registry_gives_a_warning() -> None:
    plan = decide_catalog(args(image=parse_reference("staging.example.com/osfleet/genericx86-64-ext:2.113.0")), FACTS, existing())
    assert plan.warnings == ["staging.example.com is not one of the catalog's registries (127.0.0.1:5000); "
                             f"the devices pull osfleet/genericx86-64-ext@{D2} from those"]
    assert decide_catalog(args(), FACTS, existing()).warnings == []


def test_a_new_release_is_appended_and_a_new_device_type_added() -> None:
    facts = dataclasses.replace(FACTS, arch="aarch64", os_release={"VERSION": "6.1.0", "SLUG": "jetson-xavier"})
    plan = decide_catalog(args(image=parse_reference("127.0.0.1:5000/osfleet/jetson-xavier:6.1.0")), facts, existing())
    assert [r["version"] for r in plan.document["releases"]] == ["2.88.4", "2.113.0", "6.1.0"]
    assert plan.document["device_types"]["jetson-xavier"] == {"arch": "aarch64"}
    assert plan.actions == ["add release jetson-xavier 6.1.0 (osfleet/jetson-xavier@" + D2 + ")", "add device type jetson-xavier (aarch64)"]


@pytest.mark.parametrize("path", ["/srv/catalog.json", "/srv/catalog.yml"])
def test_render_reads_back_as_the_document(path: str) -> None:
    doc = decide_catalog(args(), FACTS, existing()).document
    text = render(doc, path)
    assert (yaml.safe_load(text) if path.endswith(".yml") else json.loads(text)) == doc
