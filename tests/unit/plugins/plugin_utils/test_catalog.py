# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release catalog (plugin_utils.catalog): loading, the schema, lookups, the fetch sources."""

from __future__ import annotations

import copy
import hashlib
import json
import urllib.error

import pytest
import yaml

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import (
    Catalog,
    Delta,
    RootListing,
    Source,
    load_catalog,
    sources_for,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, OsfleetError
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import parse_version

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
DD = "sha256:" + "d" * 64

GOOD = {
    "schema": 1,
    "registries": {"primary": "127.0.0.1:5000", "fallback": "127.0.0.1:5001"},
    "insecure_registries": True,
    "supervisor_repository": "osfleet/balena-supervisor",
    "device_types": {
        "genericx86-64-ext": {"arch": "amd64"},
        "jetson-xavier": {"arch": "aarch64", "min_takeover_version": "6.0.50"},
    },
    "releases": [
        {
            "device_type": "genericx86-64-ext",
            "version": "2.113.0",
            "arch": "amd64",
            "layout": "balena-gpt-v1",
            "repository": "osfleet/genericx86-64-ext",
            "tag": "2.113.0",
            "digest": D2,
            "size": 2000,
            "size_unpacked": 5000,
            "root_listing": {"sha256": "c" * 64, "entries": 791},
            "supervisor_version": "14.11.2",
            "disk_image": {"url": "http://127.0.0.1:8080/x.img.gz", "sha256": "a" * 64, "size": 1234},
            "deltas": [
                {"from": "2.88.4", "repository": "osfleet/genericx86-64-ext-delta", "tag": "2.88.4-2.113.0", "digest": DD, "size": 300}
            ],
        },
        {
            "device_type": "genericx86-64-ext",
            "version": "2.88.4",
            "repository": "osfleet/genericx86-64-ext",
            "digest": D1,
        },
        {
            "device_type": "genericx86-64-ext",
            "version": "2.113.0+rev1",
            "repository": "osfleet/genericx86-64-ext",
            "digest": D3,
            "x-osfleet-lab": {"fault": "health"},
        },
        {
            "device_type": "jetson-xavier",
            "version": "6.0.50",
            "repository": "osfleet/jetson-xavier",
            "digest": D1,
        },
    ],
}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(copy.deepcopy(GOOD), "test.json")


# --- loading -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, dump", [("json", json.dumps), ("yaml", yaml.safe_dump), ("yml", yaml.safe_dump)])
def test_load_file_formats(tmp_path, suffix, dump):
    path = tmp_path / f"catalog.{suffix}"
    path.write_text(dump(GOOD))
    loaded = load_catalog(str(path))
    assert loaded.source == str(path)
    assert [r.version for r in loaded.releases("genericx86-64-ext")] == ["2.88.4", "2.113.0", "2.113.0+rev1"]


def test_load_url_uses_fetcher():
    calls = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return json.dumps(GOOD).encode()

    loaded = load_catalog("http://127.0.0.1:8080/catalog.json", fetch_url=fetch, allow_http=True)
    assert calls == ["http://127.0.0.1:8080/catalog.json"]
    assert [r.version for r in loaded.releases("jetson-xavier")] == ["6.0.50"]


def test_load_url_without_suffix_reads_yaml():
    loaded = load_catalog("https://example.invalid/catalog", fetch_url=lambda url: yaml.safe_dump(GOOD).encode())
    assert loaded.registries["primary"] == "127.0.0.1:5000"


def test_load_url_error_is_catalog_error():
    def fetch(url: str) -> bytes:
        raise urllib.error.URLError("connection refused")

    with pytest.raises(CatalogError, match=r"cannot fetch catalog http://127\.0\.0\.1:1/c\.json: .*connection refused"):
        load_catalog("http://127.0.0.1:1/c.json", fetch_url=fetch, allow_http=True)


def test_load_url_default_fetcher_reaches_nothing():
    # port 1 on loopback: nothing listens, open_url fails fast
    with pytest.raises(CatalogError, match=r"cannot fetch catalog http://127\.0\.0\.1:1/c\.json"):
        load_catalog("http://127.0.0.1:1/c.json", allow_http=True)


def test_plain_http_is_refused_unless_pinned_or_allowed():
    """Issue 7 item 5: the catalog names the digests and registries; over plain HTTP anyone on the
    way could change them. Refused before anything is fetched."""
    raw = json.dumps(GOOD).encode()
    calls = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        return raw

    with pytest.raises(CatalogError) as excinfo:
        load_catalog("http://127.0.0.1:8080/catalog.json", fetch_url=fetch)
    assert str(excinfo.value) == (
        "refusing the catalog http://127.0.0.1:8080/catalog.json: plain HTTP, so anyone on the way can change the digests "
        "and registries it names; use https:// or a file, pin it with catalog_sha256, or set catalog_allow_http")
    assert calls == []
    assert load_catalog("http://127.0.0.1:8080/catalog.json", fetch_url=fetch, sha256=hashlib.sha256(raw).hexdigest()).registries
    assert load_catalog("https://example.invalid/c.json", fetch_url=fetch).registries


@pytest.mark.parametrize("pin", ["{hex}", "sha256:{hex}", "SHA256:{upper}"])
def test_pinned_catalog(tmp_path, pin):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(GOOD))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_catalog(str(path), sha256=pin.format(hex=digest, upper=digest.upper())).registries["primary"] == "127.0.0.1:5000"
    path.write_text(json.dumps(GOOD).replace("127.0.0.1:5000", "evil.example:5000"))
    changed = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(str(path), sha256=pin.format(hex=digest, upper=digest.upper()))
    assert str(excinfo.value) == f"refusing the catalog {path}: its sha256 is {changed}, catalog_sha256 pins {digest}"


def test_pin_must_be_a_sha256(tmp_path):
    with pytest.raises(CatalogError, match=r"catalog_sha256 'abc' of the catalog .* is not 64 hex digits"):
        load_catalog(str(tmp_path / "c.json"), sha256="abc")


def test_supervisors_by_digest():
    data = copy.deepcopy(GOOD)
    data["supervisors"] = [{"version": "v14.11.2", "digest": D1}, {"version": "14.0.8", "repository": "other/sup", "digest": D2}]
    cat = Catalog(data)
    found = cat.supervisor("14.11.2")
    assert found is not None and (found.version, found.repository, found.digest) == ("14.11.2", "osfleet/balena-supervisor", D1)
    assert cat.supervisor("v14.11.2", "osfleet/balena-supervisor") == found
    assert cat.supervisor("14.0.8", "osfleet/balena-supervisor") is None
    assert cat.supervisor("14.0.8", "other/sup") is not None and cat.supervisor("9.9.9") is None


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(CatalogError) as excinfo:
        load_catalog(str(path))
    assert str(excinfo.value) == f"catalog file {path} does not exist"
    assert isinstance(excinfo.value, OsfleetError)


def test_unreadable_file(tmp_path):
    with pytest.raises(CatalogError, match=f"cannot read catalog file {tmp_path}: Is a directory"):
        load_catalog(str(tmp_path))


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.json", '{"releases": [}', r"catalog .*c\.json is not valid JSON: line 1 column 15: Expecting value"),
        ("c.json", '{\n  "releases": [\n    {"a": 1,}\n  ]\n}', r"is not valid JSON: line 3 column 1[23]: "),
        ("c.yaml", "releases:\n  - a: 1\n   b: 2\n", r"catalog .*c\.yaml is not valid YAML: line 3 column 4: "),
        ("c.yml", "releases: [1, 2\n", r"is not valid YAML: line 2 column 1: "),
        ("c.yaml", "a: b: c\n", r"is not valid YAML: line 1 column 5: mapping values are not allowed here"),
        ("c.json", "", r"is not valid JSON: line 1 column 1: Expecting value"),
        ("c.yaml", "", r"is invalid: top level: must be a mapping, got nothing"),
        ("c.yaml", "- 1\n- 2\n", r"is invalid: top level: must be a mapping, got list"),
    ],
)
def test_malformed(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"releases": "\xff"}')
    with pytest.raises(CatalogError, match=r"is not UTF-8 text"):
        load_catalog(str(path))


# --- schema --------------------------------------------------------------------------------------

def broken(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def _set(path, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


SCHEMA_CASES = [
    (_set(["releases"], KeyError), "catalog: missing 'releases'"),
    (_set(["releases"], {"a": 1}), "releases: must be a list, got dict"),
    (_set(["releases", 1], "2.88.4"), "releases[1]: must be a mapping, got str"),
    (_set(["releases", 1, "device_type"], KeyError), "releases[1]: missing 'device_type'"),
    (_set(["releases", 1, "version"], KeyError), "releases[1]: missing 'version'"),
    (_set(["releases", 1, "repository"], KeyError), "releases[1] (genericx86-64-ext 2.88.4): missing 'repository'"),
    (_set(["releases", 1, "digest"], KeyError), "releases[1] (genericx86-64-ext 2.88.4): missing 'digest'"),
    (_set(["releases", 1, "digest"], "sha256:abc"), "digest 'sha256:abc' is not sha256:<64 lowercase hex digits>"),
    (_set(["releases", 1, "digest"], "md5:" + "1" * 32), "is not sha256:<64 lowercase hex digits>"),
    (_set(["releases", 1, "digest"], "sha256:" + "A" * 64), "is not sha256:<64 lowercase hex digits>"),
    (_set(["releases", 1, "version"], "2.88"), "releases[1] (genericx86-64-ext 2.88): invalid balenaOS version '2.88'"),
    (_set(["releases", 1, "version"], 2.88), "releases[1]: 'version' must be a non-empty string, got 2.88"),
    (_set(["releases", 1, "repository"], ""), "'repository' must be a non-empty string, got ''"),
    (_set(["releases", 1, "size"], -1), "'size' must be a non-negative integer, got -1"),
    (_set(["releases", 1, "size"], True), "'size' must be a non-negative integer, got True"),
    (_set(["releases", 1, "size_unpacked"], "60 MB"), "'size_unpacked' must be a non-negative integer, got '60 MB'"),
    (
        _set(["releases", 1, "version"], "v2.113.0"),
        "releases[1]: duplicate release 2.113.0 for device type genericx86-64-ext (also releases[0])",
    ),
    (_set(["releases", 0, "deltas", 0, "from"], KeyError), "releases[0] (genericx86-64-ext 2.113.0) deltas[0]: missing 'from'"),
    (_set(["releases", 0, "deltas", 0, "digest"], KeyError), "releases[0] (genericx86-64-ext 2.113.0) deltas[0]: missing 'digest'"),
    (_set(["releases", 0, "deltas", 0, "from"], "old"), "deltas[0]: invalid balenaOS version 'old'"),
    (_set(["releases", 0, "deltas"], {"from": "2.88.4"}), "'deltas' must be a list, got dict"),
    (_set(["releases", 0, "deltas", 0], "x"), "deltas[0]: must be a mapping, got str"),
    (_set(["releases", 0, "disk_image", "sha256"], "xyz"), "disk_image: sha256 'xyz' is not 64 lowercase hex digits"),
    (_set(["releases", 0, "disk_image", "url"], KeyError), "disk_image: missing 'url'"),
    (_set(["releases", 0, "disk_image", "raw_size"], -1), "disk_image: 'raw_size' must be a non-negative integer, got -1"),
    (_set(["releases", 0, "disk_image"], "http://x"), "disk_image: must be a mapping, got str"),
    (_set(["releases", 0, "root_listing"], "c" * 64), "releases[0] (genericx86-64-ext 2.113.0) root_listing: must be a mapping, got str"),
    (_set(["releases", 0, "root_listing", "sha256"], "sha256:" + "c" * 64), "root_listing: sha256 'sha256:cccc"),
    (_set(["releases", 0, "root_listing", "sha256"], "C" * 64), "root_listing: sha256 'CCCC"),
    (_set(["releases", 0, "root_listing", "sha256"], KeyError), "root_listing: missing 'sha256'"),
    (_set(["releases", 0, "root_listing", "entries"], KeyError), "root_listing: missing 'entries'"),
    (_set(["releases", 0, "root_listing", "entries"], 0), "root_listing: 'entries' must be a positive integer, got 0"),
    (_set(["releases", 0, "root_listing", "entries"], True), "root_listing: 'entries' must be a positive integer, got True"),
    (_set(["releases", 0, "root_listing", "entries"], "791"), "root_listing: 'entries' must be a positive integer, got '791'"),
    (_set(["schema"], 2), "schema: unsupported schema 2 (this collection reads schema 1)"),
    (_set(["registries"], ["127.0.0.1:5000"]), "registries: must be a mapping, got list"),
    (_set(["registries", "primary"], 5000), "registries: 'primary' must be a non-empty string, got 5000"),
    (_set(["insecure_registries"], "yes"), "insecure_registries: must be true or false"),
    (_set(["device_types", "jetson-xavier", "min_takeover_version"], "six"), "device_types.jetson-xavier: invalid balenaOS version 'six'"),
    (_set(["device_types", "jetson-xavier"], None), "device_types.jetson-xavier: must be a mapping, got NoneType"),
    (_set(["supervisors"], {"14.11.2": D1}), "supervisors: must be a list, got dict"),
    (_set(["supervisors"], [{"version": "14.11.2", "digest": "sha256:x"}]), "supervisors[0]: digest 'sha256:x' is not sha256:"),
    (_set(["supervisors"], [{"digest": D1}]), "supervisors[0]: missing 'version'"),
]


@pytest.mark.parametrize("change, message", SCHEMA_CASES)
def test_schema_errors(change, message):
    with pytest.raises(CatalogError) as excinfo:
        Catalog(broken(change), "cat.json")
    text = str(excinfo.value)
    assert text.startswith("catalog cat.json is invalid: ")
    assert message in text


def test_schema_errors_are_all_reported():
    def change(data):
        del data["releases"][1]["digest"]
        data["releases"][3]["version"] = "x"

    with pytest.raises(CatalogError) as excinfo:
        Catalog(broken(change), "cat.json")
    text = str(excinfo.value)
    assert "releases[1] (genericx86-64-ext 2.88.4): missing 'digest'" in text
    assert "releases[3] (jetson-xavier x): invalid balenaOS version 'x'" in text


def test_minimal_catalog():
    cat = Catalog({"releases": []})
    assert cat.registries == {} and cat.insecure_registries is False and cat.supervisor_repository is None
    assert cat.device_types == []


# --- lookups -------------------------------------------------------------------------------------

def test_release_fields(catalog):
    release = catalog.release("genericx86-64-ext", "2.113.0")
    assert release.device_type == "genericx86-64-ext"
    assert release.version == "2.113.0"
    assert release.parsed == parse_version("2.113.0")
    assert (release.arch, release.layout, release.tag, release.size, release.size_unpacked) == ("amd64", "balena-gpt-v1", "2.113.0", 2000, 5000)
    assert release.supervisor_version == "14.11.2"
    assert release.root_listing == RootListing("c" * 64, 791)
    assert release.disk_image == {"url": "http://127.0.0.1:8080/x.img.gz", "sha256": "a" * 64, "size": 1234}
    assert release.deltas == [Delta("2.88.4", "osfleet/genericx86-64-ext-delta", "2.88.4-2.113.0", DD, 300)]
    assert release.image_ref("127.0.0.1:5000") == f"127.0.0.1:5000/osfleet/genericx86-64-ext@{D2}"
    assert release.image_ref("127.0.0.1:5000/") == f"127.0.0.1:5000/osfleet/genericx86-64-ext@{D2}"


def test_release_optional_fields_absent(catalog):
    release = catalog.release("genericx86-64-ext", "2.88.4")
    assert (release.arch, release.layout, release.tag, release.size, release.size_unpacked, release.supervisor_version) == (None,) * 6
    assert release.disk_image is None and release.deltas == [] and release.root_listing is None


@pytest.mark.parametrize("asked", ["2.113.0", "v2.113.0", "2.113.0.prod", "2.113.0+build1"])
def test_release_matches_by_version_value(catalog, asked):
    assert catalog.release("genericx86-64-ext", asked).digest == D2


def test_release_matches_rev(catalog):
    assert catalog.release("genericx86-64-ext", "2.113.0-rev1").digest == D3


def test_release_unknown_version(catalog):
    with pytest.raises(CatalogError) as excinfo:
        catalog.release("genericx86-64-ext", "2.99.0")
    assert str(excinfo.value) == "unknown target version 2.99.0 for genericx86-64-ext; known: 2.88.4, 2.113.0, 2.113.0+rev1"


def test_release_unknown_device_type(catalog):
    with pytest.raises(CatalogError) as excinfo:
        catalog.release("raspberrypi4-64", "2.113.0")
    assert str(excinfo.value) == "unknown device type raspberrypi4-64 in catalog test.json; known: genericx86-64-ext, jetson-xavier"


def test_release_bad_version(catalog):
    with pytest.raises(CatalogError, match="catalog test.json: invalid balenaOS version 'latest'"):
        catalog.release("genericx86-64-ext", "latest")


def test_releases_sorted(catalog):
    assert [r.version for r in catalog.releases("genericx86-64-ext")] == ["2.88.4", "2.113.0", "2.113.0+rev1"]
    assert catalog.releases("nope") == []


def test_device_type(catalog):
    assert catalog.device_type("jetson-xavier") == {"arch": "aarch64", "min_takeover_version": "6.0.50"}
    cat = Catalog(broken(_set(["device_types"], {})))
    assert cat.device_type("genericx86-64-ext") == {}  # known from its releases only
    with pytest.raises(CatalogError, match="unknown device type nope in catalog test.json; known: genericx86-64-ext, jetson-xavier"):
        catalog.device_type("nope")


def test_top_level_properties(catalog):
    assert catalog.registries == {"primary": "127.0.0.1:5000", "fallback": "127.0.0.1:5001"}
    assert catalog.insecure_registries is True
    assert catalog.supervisor_repository == "osfleet/balena-supervisor"


def test_registries_in_order_and_insecure_override(catalog):
    assert catalog.ordered_registries == [("primary", "127.0.0.1:5000"), ("fallback", "127.0.0.1:5001")]
    cat = Catalog(broken(_set(["registries"], {"zeta": "z:1", "fallback": "f:2", "alpha": "a:3", "primary": "p:4"})))
    assert [name for name, _reg in cat.ordered_registries] == ["primary", "fallback", "alpha", "zeta"]
    assert catalog.registry_insecure(None) is True and catalog.registry_insecure(False) is False
    assert Catalog({"releases": []}).registry_insecure(None) is False and Catalog({"releases": []}).registry_insecure(True) is True


def test_tool_extensions_are_ignored():
    """Keys that start with x- belong to the tools that write the catalog (docs/internals.md §3)."""
    def change(data):
        data["x-osfleet-lab"] = {"supervisors": [], "anything": {"goes": True}}
        data["device_types"]["jetson-xavier"]["x-osfleet-lab"] = "not a version"
        data["releases"][0]["x-osfleet-lab"] = {"fault": "boot"}
        data["releases"][0]["deltas"][0]["x-other-tool"] = ["x"]

    cat = Catalog(broken(change), "ext.json")
    release = cat.release("genericx86-64-ext", "2.113.0")
    assert release.digest == D2 and release.deltas[0].digest == DD
    assert not any("x-" in name or "fault" in name for name in vars(release))
    assert cat.device_type("jetson-xavier")["min_takeover_version"] == "6.0.50"


# --- deltas and sources --------------------------------------------------------------------------

@pytest.mark.parametrize("current, found", [("2.88.4", True), ("v2.88.4", True), ("2.88.4.prod", True), ("2.88.4+rev1", False), ("2.90.0", False)])
def test_delta_from(catalog, current, found):
    delta = catalog.release("genericx86-64-ext", "2.113.0").delta_from(current)
    assert (delta is not None) is found
    if found:
        assert delta.image_ref("127.0.0.1:5000") == f"127.0.0.1:5000/osfleet/genericx86-64-ext-delta@{DD}"


def test_delta_repository_defaults_to_release_repository():
    cat = Catalog(broken(_set(["releases", 0, "deltas", 0, "repository"], KeyError)))
    assert cat.release("genericx86-64-ext", "2.113.0").deltas[0].repository == "osfleet/genericx86-64-ext"


def test_sources_delta_primary_fallback(catalog):
    release = catalog.release("genericx86-64-ext", "2.113.0")
    assert sources_for(release, "2.88.4", catalog.registries) == [
        Source("delta", "127.0.0.1:5000", f"127.0.0.1:5000/osfleet/genericx86-64-ext-delta@{DD}", DD, 300),
        Source("registry", "127.0.0.1:5000", f"127.0.0.1:5000/osfleet/genericx86-64-ext@{D2}", D2, 2000),
        Source("fallback", "127.0.0.1:5001", f"127.0.0.1:5001/osfleet/genericx86-64-ext@{D2}", D2, 2000),
    ]


@pytest.mark.parametrize(
    "current, registries, kinds",
    [
        ("2.90.0", {"primary": "p:1", "fallback": "f:2"}, ["registry", "fallback"]),
        ("2.88.4", {"primary": "p:1"}, ["delta", "registry"]),
        ("2.88.4", {"primary": "p:1", "fallback": ""}, ["delta", "registry"]),
        (None, {"primary": "p:1"}, ["registry"]),
    ],
)
def test_sources_kinds(catalog, current, registries, kinds):
    release = catalog.release("genericx86-64-ext", "2.113.0")
    sources = sources_for(release, current, registries)
    assert [s.kind for s in sources] == kinds
    assert all(s.ref.startswith(s.registry + "/") and s.ref.endswith("@" + s.digest) for s in sources)


def test_sources_need_primary(catalog):
    with pytest.raises(CatalogError, match="no primary registry configured for release genericx86-64-ext 2.113.0"):
        sources_for(catalog.release("genericx86-64-ext", "2.113.0"), "2.88.4", {"fallback": "f:2"})
