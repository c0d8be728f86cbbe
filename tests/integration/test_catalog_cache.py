# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the catalog and the image cache protect on a lab device (issue 7 items 4, 5, 6, 9), and the
catalog module (osfleet.hup.catalog, issue 9) describing the lab's releases from its registry.

One 2.88.4 lab device; each test runs osfleet.hup steps from a real ansible-playbook (the helpers of
test_steps_prepare.py) and, for the guards inside device scripts, the script itself on the device.
"""

from __future__ import annotations

import hashlib
import json
import typing as t
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun, TaskResult, ansible_playbook
from test_steps_prepare import GX, NEXT, SUPERVISOR_AFTER, TARGET, Steps, assert_failed_cleanly, release_change, release_step, step

LAB_PREFIX = "itcat"
LAB_DEVICES = 1
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Steps:
    s = Steps(lab, tmp_path_factory.mktemp("catalog"))
    state = lab.state(s.host)
    assert (state.version, state.active_root) == ("2.88.4", "resin-rootA"), "a fresh lab device"
    return s


def inactive_mib(steps: Steps) -> int:
    return int(steps.lab.sh(steps.host, "df -Pk /mnt/sysroot/inactive | awk 'NR==2 {print $2}'")) // 1024


# --- item 9: the root-size check uses the unpacked size ------------------------------------------------

def test_image_that_unpacks_larger_than_the_root_is_refused_before_mkfs(steps: Steps) -> None:
    """The pull size (~25 MiB) fits the ~290 MiB root many times over; the catalog says the image
    unpacks to more than the root holds: preflight and rootfs refuse, nothing is formatted."""
    root_mib = inactive_mib(steps)
    big = steps.catalog_copy("unpacks-big.json", release_change(TARGET, size_unpacked=(root_mib + 10) * MIB))
    assert steps.release(TARGET)["size"] * 1.2 < root_mib * MIB, "the pull size alone would pass"
    before = steps.fingerprint()
    run = steps.play([release_step("preflight", catalog=big)])
    assert_failed_cleanly(steps, run, before, f"the inactive root resin-rootB is too small: {root_mib} MiB, {TARGET} needs ",
                          f"MiB unpacked (size_unpacked {root_mib + 10} MiB × 1.1)")
    fetched = steps.play([release_step("fetch", catalog=big, sources=["registry"])])
    assert fetched.rc == 0, fetched.summary()
    before = steps.fingerprint()
    run = steps.play([release_step("rootfs", catalog=big)])
    assert_failed_cleanly(steps, run, before, "the inactive root resin-rootB is too small")
    # the catalog's true size passes
    run = steps.play([release_step("preflight")])
    assert run.rc == 0, run.summary()
    assert steps.results(run)[0].result["release"]["size_unpacked"] == steps.release(TARGET)["size_unpacked"]


# --- item 6: the cache dir is a directory of its own ---------------------------------------------------

DATA_LISTING = "cd /mnt/data && find . -xdev | sort"


def data_snapshot(steps: Steps) -> tuple[str, dict[str, str]]:
    """Every path in /mnt/data and every file's sha256 (the user app's heartbeat log grows by itself)."""
    return steps.lab.sh(steps.host, DATA_LISTING), steps.lab.sha256_tree(steps.host, "/mnt/data", exclude=["user-app/heartbeat.log"])


def test_data_partition_as_cache_dir_is_refused_and_left_intact(steps: Steps) -> None:
    """cache_dir=/mnt/data (a mount point; the engine's data, the run logs live there): the fetch
    step refuses it, and so does the device script when it runs anyway; nothing in /mnt/data changes
    (the fetch used to pull there and then remove every other directory)."""
    steps.lab.sh(steps.host, "mkdir -p /mnt/data/docker/volumes/app && echo precious > /mnt/data/docker/volumes/app/db && sync")
    before, data = steps.fingerprint(), data_snapshot(steps)
    assert "./docker/volumes/app/db" in data[0].split() and data[1]["docker/volumes/app/db"]
    run = steps.play([release_step("fetch", cache_dir="/mnt/data", sources=["registry"])])
    assert_failed_cleanly(steps, run, before, "refusing cache_dir /mnt/data: it is a mount point; the image cache must be a directory of its own")
    run = steps.play([release_step("rootfs", cache_dir="/mnt/data")])
    assert_failed_cleanly(steps, run, before, "refusing cache_dir /mnt/data: it is a mount point")
    assert data_snapshot(steps) == data

    # the device script's own guard, with an attempt that would succeed
    target = steps.release(TARGET)
    primary = steps.lab.catalog()["registries"]["primary"]
    attempt = {"kind": "registry", "ref": f"{primary}/{target['repository']}@{target['digest']}", "digest": target["digest"], "tag": TARGET}
    for cache, why in (("/mnt/data", "it is a mount point"),
                       ("/mnt/data/docker", "it is not empty and has no .osfleet-cache, so osfleet.hup did not make it")):
        res = steps.lab.run_script(steps.host, "fetch", cache=cache, insecure=True, input={"attempts": [attempt], "auth": None})
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert f"refusing cache_dir {cache}: {why}" in res.stderr
        assert data_snapshot(steps) == data, f"fetch.sh with cache={cache} changed /mnt/data"
    assert steps.fingerprint() == before
    steps.lab.sh(steps.host, "rm -rf /mnt/data/docker && sync")


# --- item 5: the catalog and the supervisor image are protected -------------------------------------------

def http_catalog_url(steps: Steps) -> str:
    """The lab's HTTP server serves the same catalog.json as the file the inventory names."""
    services = json.loads((Path(steps.catalog_path).parent / "services.json").read_text())
    return f"{services['http']}/catalog.json"


def test_plain_http_catalog_is_refused_unless_pinned_or_allowed(steps: Steps) -> None:
    url = http_catalog_url(steps)
    pin = hashlib.sha256(Path(steps.catalog_path).read_bytes()).hexdigest()
    before = steps.fingerprint()
    for module in ("preflight", "fetch", "rootfs"):
        run = steps.play([release_step(module, catalog=url)])
        assert_failed_cleanly(steps, run, before, f"refusing the catalog {url}: plain HTTP, so anyone on the way can change the digests",
                              "pin it with catalog_sha256, or set catalog_allow_http")
    run = steps.play([release_step("preflight", catalog=url, catalog_sha256="0" * 64)])
    assert_failed_cleanly(steps, run, before, f"refusing the catalog {url}: its sha256 is {pin}, catalog_sha256 pins {'0' * 64}")
    changed = steps.catalog_copy("changed.json", release_change(TARGET, size=1))
    run = steps.play([release_step("preflight", catalog=changed, catalog_sha256=pin)])
    assert_failed_cleanly(steps, run, before, f"refusing the catalog {changed}: its sha256 is ")
    for extra in ({"catalog_sha256": f"sha256:{pin}"}, {"catalog_allow_http": True}):
        run = steps.play([release_step("preflight", catalog=url, **extra)])
        assert run.rc == 0, run.summary()
        assert steps.results(run)[0].result["phase"] == "needed"
    assert steps.fingerprint() == before


def supervisor_conf(steps: Steps) -> str:
    return steps.lab.sh(steps.host, "cat /mnt/state/root-overlay/etc/balena-supervisor/supervisor.conf; systemctl is-active balena-supervisor")


def test_supervisor_is_pulled_by_digest_only(steps: Steps) -> None:
    wanted = next(s for s in steps.lab.catalog()["supervisors"] if s["version"] == SUPERVISOR_AFTER)
    before, conf = steps.fingerprint(), supervisor_conf(steps)
    # a catalog that names no digest for the wanted supervisor: refused, nothing pulled
    undigested = steps.catalog_copy("no-supervisor-digest.json",
                                    lambda data: data.update(supervisors=[s for s in data["supervisors"] if s["version"] != SUPERVISOR_AFTER]))
    run = steps.play([step("supervisor", state="updated", catalog=undigested, target_version=TARGET)])
    assert_failed_cleanly(steps, run, before, f"the catalog names no digest for supervisor v{SUPERVISOR_AFTER} in osfleet/balena-supervisor")
    # the device script's own guard: an image by tag only is refused before anything is pulled
    primary = steps.lab.catalog()["registries"]["primary"]
    tagged = f"{primary}/{wanted['repository']}:v{SUPERVISOR_AFTER}"
    res = steps.lab.run_script(steps.host, "supervisor", op="update", insecure=True, images=[tagged])
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert res.stderr.strip() == f"refusing supervisor image {tagged}: not pulled by digest (<image>@sha256:<hex>)"
    assert supervisor_conf(steps) == conf and steps.fingerprint() == before
    # the step pulls by the catalog's digest
    run = steps.play([step("supervisor", state="updated", catalog="{{ hup_catalog }}", target_version=TARGET)])
    assert run.rc == 0, run.summary()
    (res_step,) = steps.results(run)
    assert res_step.result["supervisor"]["image"] == f"{tagged}@{wanted['digest']}"
    assert steps.lab.state(steps.host).supervisor_running == SUPERVISOR_AFTER


# --- osfleet.hup.catalog: the lab's releases described from their images in the lab's registry ----------

CATALOG_KEYS = ("device_type", "version", "arch", "layout", "repository", "tag", "digest", "size", "image_id", "size_unpacked",
                "supervisor_version", "deltas")


def catalog_task(name: str, **args: t.Any) -> dict[str, t.Any]:
    return {"name": name, "osfleet.hup.catalog": args}


def localhost_play(steps: Steps, name: str, tasks: list[dict[str, t.Any]], *args: str) -> PlaybookRun:
    book = steps.workdir / name
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    return ansible_playbook(steps.lab, *args, workdir=steps.workdir, playbook=str(book))


def catalog_results(run: PlaybookRun) -> dict[str, TaskResult]:
    return {r.task: r for r in run.results if r.action == "osfleet.hup.catalog"}


def test_catalog_module_describes_a_release_as_the_lab_does(steps: Steps) -> None:
    """From a fresh file: the entry (with its deltas and supervisor read from the registry) is the lab's
    own; again: no change, same bytes; --check on a catalog lacking the release: the entry, no write;
    a reference the registry does not have: a clear failure, the file as it was."""
    lab_catalog = steps.lab.catalog()
    primary = lab_catalog["registries"]["primary"]
    want = steps.release(NEXT)
    sup = next(s for s in lab_catalog["supervisors"] if s["version"] == want["supervisor_version"])
    fresh = steps.workdir / "own-catalog.json"
    lacking = Path(steps.catalog_copy("lacking.json", lambda data: data.update(
        releases=[r for r in data["releases"] if not (r["device_type"] == GX and r["version"] == NEXT)])))
    lacking_bytes = lacking.read_bytes()
    image = f"{primary}/{want['repository']}:{want['tag']}"
    full = {"path": str(fresh), "image": image, "layout": want["layout"], "registry_insecure": True,
            "deltas": [{"from": d["from"], "image": f"{primary}/{d['repository']}:{d['tag']}"} for d in want["deltas"]],
            "supervisor_image": f"{primary}/{sup['repository']}:{sup['tag']}"}
    run = localhost_play(steps, "catalog-module.yml", [
        catalog_task("add", **full),
        catalog_task("again", **full),
        {**catalog_task("check", path=str(lacking), image=image, layout=want["layout"]), "check_mode": True, "diff": True},
        {**catalog_task("bad", path=str(fresh), image=f"{primary}/{want['repository']}:no-such-tag"), "ignore_errors": True},
    ], "--diff")
    assert run.rc == 0, run.summary()
    res = catalog_results(run)
    added = res["add"].result
    assert res["add"].changed and added["release"] == {k: want[k] for k in CATALOG_KEYS}
    assert added["supervisor"] == sup
    written = json.loads(fresh.read_text())
    assert written["releases"] == [added["release"]] and written["supervisors"] == [sup]
    assert written["registries"] == {"primary": primary} and written["insecure_registries"] is True
    assert added["diff"]["before"] == "" and json.loads(added["diff"]["after"]) == written
    assert not res["again"].changed and res["again"].result["actions"] == [] and res["again"].result["release"] == added["release"]
    checked = res["check"]
    assert checked.changed and lacking.read_bytes() == lacking_bytes, "check mode writes nothing"
    assert checked.result["release"] == {**{k: want[k] for k in CATALOG_KEYS}, "deltas": []}
    assert checked.result["actions"] == [f"add release {GX} {NEXT} ({want['repository']}@{want['digest']})"]
    assert f'"digest": "{want["digest"]}"' in checked.result["diff"]["after"]
    bad = res["bad"]
    assert bad.failed and "manifest unknown" in bad.result["msg"], bad.result
    assert bad.result["msg"].startswith(f"cannot read the manifest of {primary}/{want['repository']}:no-such-tag: skopeo failed")
    assert json.loads(fresh.read_text()) == written, "a failure leaves the file as it was"


#: one release per device type and one with a fault overlay (each refresh reads a whole image, ~1 s)
LAB_SAMPLE = {(GX, "2.88.4"), (GX, "2.115.0"), ("jetson-xavier", "6.1.0")}


def test_the_lab_catalog_is_what_the_catalog_module_writes(steps: Steps) -> None:
    """Releases of the lab's catalog refreshed from their images: nothing to change (digest, image_id,
    sizes, arch, versions; the aarch64 jetson image is arm64 in its config)."""
    lab_catalog = steps.lab.catalog()
    primary = lab_catalog["registries"]["primary"]
    copy_path = steps.catalog_copy("lab-copy.json", lambda data: None)
    before = Path(copy_path).read_bytes()
    sample = [r for r in lab_catalog["releases"] if (r["device_type"], r["version"]) in LAB_SAMPLE]
    assert len(sample) == len(LAB_SAMPLE)
    tasks = [catalog_task(f"{r['device_type']} {r['version']}", path=copy_path, image=f"{primary}/{r['repository']}:{r['tag']}")
             for r in sample]
    run = localhost_play(steps, "catalog-lab.yml", tasks)
    assert run.rc == 0, run.summary()
    res = catalog_results(run)
    assert sorted(res) == sorted(f"{r['device_type']} {r['version']}" for r in sample)
    for rel in sample:
        got = res[f"{rel['device_type']} {rel['version']}"]
        assert not got.changed, (rel["version"], got.result.get("actions"))
        assert got.result["release"] == rel
    assert Path(copy_path).read_bytes() == before
