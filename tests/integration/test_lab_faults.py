# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.update on devices given a fault with ``labctl fault`` (Lab.fault): any release's
update fails the way the fault says, and after ``clear`` the same update goes through.

Unlike the releases built with a fault (test_faults: 2.115.0 health, 2.115.1 boot), these faults
belong to one device and hit the update to the ordinary target 2.113.0:

* registry → the preflight finds no registry answering from the device; with the registry check
  off, the fetch fails naming the registries; the device is as before (same boot, env, lock free);
* full → the preflight refuses, naming the free space on /mnt/data; clear gives the space back;
* health → the new OS boots, its health check fails, it is rolled back (health);
* boot → the new OS does not boot, the bootloader falls back (altboot);
* clear → a rerun (``hup_retry_rolled_back``: the collection does not retry a release that
  rolled back on its own) updates the device.

Each device runs one chain (a registry or full fault, clear, a health or boot fault, clear, the
rerun): two ab and two balenaos devices, all four chains at once from the first test on; each test
checks what its chain saw.
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from osfleet_harness import DeviceState, Lab, PlaybookRun, ansible_playbook

SOURCE, TARGET = "2.88.4", "2.113.0"
LAB_PREFIX = "itlabflt"
LAB_DEVICES = 2  # ab devices; two balenaos devices join them (fleet)
#: per profile, the two chains: (fault before the switch, fault after it)
CHAINS = {"ab": [("registry", "health"), ("full", "boot")], "balenaos": [("full", "health"), ("registry", "boot")]}
FREE_DATA = "df -Pk /mnt/data | awk 'NR == 2 { print $4 }'"


@dataclass
class Chain:
    host: str
    profile: str
    first: str
    second: str
    status: dict[str, list[str]] = field(default_factory=dict)  # label -> the device's fault in labctl status
    said: dict[str, str] = field(default_factory=dict)  # label -> labctl fault's line
    runs: dict[str, PlaybookRun] = field(default_factory=dict)
    states: dict[str, DeviceState] = field(default_factory=dict)
    free_kib: dict[str, int] = field(default_factory=dict)


#: the fault each test checks
KIND_OF_TEST = {
    "test_registry_fault_fails_the_fetch_naming_the_registry": "registry",
    "test_full_fault_is_refused_by_the_preflight": "full",
    "test_health_fault_is_rolled_back_then_clear_lets_it_update": "health",
    "test_boot_fault_falls_back_then_clear_lets_it_update": "boot",
}


def selected(session: pytest.Session) -> set[tuple[str, str]]:
    """(profile, kind) of the tests of this module that the session runs (e.g. after ``-k``)."""
    return {(item.callspec.params["profile"], KIND_OF_TEST[item.originalname]) for item in session.items
            if getattr(item, "module", None) is not None and item.module.__name__ == __name__ and hasattr(item, "callspec")}


class Chains:
    """Runs the chains of the selected tests, each on its own device, all at once."""

    def __init__(self, lab: Lab, workdir: Path, wanted: t.Collection[tuple[str, str]]) -> None:
        self.lab = lab
        self.workdir = workdir
        self.hosts: dict[tuple[str, str], str] = {}  # (profile, kind) -> the device whose chain has it
        chains = []
        for profile, pairs in CHAINS.items():
            hosts = [h for h in lab.hosts if lab.host_vars[h]["lab_profile"] == profile]
            for host, (first, second) in zip(hosts, pairs, strict=True):
                if (profile, first) in wanted or (profile, second) in wanted:
                    chains.append(Chain(host, profile, first, second))
                    self.hosts[(profile, first)] = self.hosts[(profile, second)] = host
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(chains)))
        self._futures: dict[str, Future[Chain]] = {c.host: self._pool.submit(self._run, c) for c in chains}

    def result(self, profile: str, kind: str) -> Chain:
        return self._futures[self.hosts[(profile, kind)]].result(timeout=1500)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _play(self, chain: Chain, label: str, **extra: t.Any) -> PlaybookRun:
        run = ansible_playbook(self.lab, workdir=self.workdir / chain.host, limit=chain.host,
                               extra_vars={"hup_target_version": TARGET, "hup_run_id": f"labfault-{chain.host}-{label}", **extra})
        chain.runs[label] = run
        return run

    def _status(self, chain: Chain, label: str) -> None:
        chain.status[label] = next(r["fault"] for r in self.lab.status() if r["device"] == chain.host)

    def _free(self, chain: Chain, label: str) -> None:
        chain.free_kib[label] = int(self.lab.sh(chain.host, FREE_DATA))

    def _run(self, chain: Chain) -> Chain:
        lab, host = self.lab, chain.host
        chain.states["before"] = lab.state(host)
        self._free(chain, "before")
        chain.said[chain.first] = lab.fault(host, chain.first)
        self._status(chain, chain.first)
        self._free(chain, chain.first)
        self._play(chain, chain.first)
        if chain.first == "registry":  # past the preflight's registry check: the fetch itself
            self._play(chain, "fetch", hup_check_registry=False)
        chain.states[chain.first] = lab.state(host)
        chain.said["clear " + chain.first] = lab.fault(host, "clear")
        self._status(chain, "clear " + chain.first)
        self._free(chain, "clear " + chain.first)

        chain.said[chain.second] = lab.fault(host, chain.second)
        self._status(chain, chain.second)
        self._play(chain, chain.second)
        chain.states[chain.second] = lab.state(host)
        chain.said["clear " + chain.second] = lab.fault(host, "clear")
        self._status(chain, "clear " + chain.second)
        self._play(chain, "rerun", hup_retry_rolled_back=True)
        chain.states["final"] = lab.state(host)
        return chain


@pytest.fixture(scope="module")
def fleet(lab: Lab) -> Lab:
    lab.labctl("up", "--devices", "2", "--profile", "balenaos", "--os", SOURCE, timeout=900)
    mixed = Lab.from_inventory(lab.prefix, lab.inventory)
    assert len(mixed.hosts) == 4, mixed.hosts
    return mixed


@pytest.fixture(scope="module")
def chains(request: pytest.FixtureRequest, fleet: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chains]:
    running = Chains(fleet, tmp_path_factory.mktemp("labfaults"), selected(request.session))
    yield running
    running.close()


def failure(run: PlaybookRun, host: str) -> str:
    assert run.rc != 0, f"{host}: the run should have failed\n{run.summary()}"
    fails = run.failures(host)
    assert fails, run.summary()
    return str(fails[-1].result.get("msg", ""))


def assert_as_before(before: DeviceState, after: DeviceState, host: str, new_markers: t.Collection[str] = ()) -> None:
    """Nothing switched and nothing is left behind: same OS, same boot, same env, lock free
    (``new_markers``: files in /mnt/state the failed run may leave)."""
    assert (after.version, after.active_root, after.boot_id) == (before.version, before.active_root, before.boot_id), (before, after)
    assert after.env == before.env, (before.env, after.env)
    assert [m for m in after.markers if m not in new_markers] == before.markers, (before.markers, after.markers)
    assert after.lock == "" and after.supervisor_active, f"{host}: lock {after.lock!r}, supervisor active {after.supervisor_active}"


def assert_rolled_back(chain: Chain, reason: str) -> None:
    run = chain.runs[chain.second]
    health = run.step(chain.host, "osfleet.hup.health").result
    assert health.get("rolled_back") is True and health.get("rollback_reason") == reason, health
    msg = failure(run, chain.host)
    print(f"{chain.host} ({chain.profile}): {msg}")
    assert "failed at step health: the device rolled back" in msg and f"rolled back ({reason}), the device runs {SOURCE} again" in msg, msg
    after = chain.states[chain.second]
    assert (after.version, after.active_root) == (SOURCE, "resin-rootA"), after
    assert after.committed and after.lock == "" and after.supervisor_active, after


def assert_cleared_and_updated(chain: Chain) -> None:
    assert chain.status[chain.second] == [chain.second], chain.status
    assert chain.said["clear " + chain.second] == f"{chain.host}: cleared the faults {chain.second}", chain.said
    assert chain.status["clear " + chain.second] == [], chain.status
    rerun = chain.runs["rerun"]
    assert rerun.rc == 0, rerun.summary()
    final = chain.states["final"]
    assert (final.version, final.active_root) == (TARGET, "resin-rootB"), final
    assert final.committed and final.lock == "" and final.supervisor_active, final


@pytest.mark.parametrize("profile", ["ab", "balenaos"])
def test_registry_fault_fails_the_fetch_naming_the_registry(chains: Chains, profile: str) -> None:
    chain = chains.result(profile, "registry")
    assert chain.status["registry"] == ["registry"], chain.status
    registries = chains.lab.catalog()["registries"]
    preflight = failure(chain.runs["registry"], chain.host)
    print(f"{chain.host} ({profile}) preflight: {preflight}")
    assert f"preflight failed: no registry answers from the device: primary {registries['primary']}: curl: (7) Failed to connect" in preflight, preflight
    assert f"; fallback {registries['fallback']}: curl: (7) Failed to connect" in preflight, preflight
    # the pull itself: the fetch step's skopeo (ab), the device's hostapp-update in the rootfs step
    # (balenaos: nothing is fetched ahead on a hostapp device), each source refused by its registry
    fetch = failure(chain.runs["fetch"], chain.host)
    print(f"{chain.host} ({profile}) fetch: {fetch}")
    step = "fetch" if profile == "ab" else "rootfs"
    assert f"failed at step {step}: all sources failed: delta ({registries['primary']}/" in fetch, fetch
    for kind, addr in (("registry", registries["primary"]), ("fallback", registries["fallback"])):
        assert f"; {kind} ({addr}/" in fetch and f"dial tcp {addr}: connect: connection refused" in fetch, fetch
    assert fetch.endswith(f"-- nothing switched, the device stays on {SOURCE}"), fetch
    # a hostapp device's hostapp-update writes rollback-health-variables before it pulls (as
    # balenaOS's does), and nothing removes it when the pull fails; without a breadcrumb it is inert
    assert_as_before(chain.states["before"], chain.states["registry"], chain.host,
                     ("rollback-health-variables",) if profile == "balenaos" else ())
    assert chain.said["clear registry"] == f"{chain.host}: cleared the faults registry", chain.said
    assert chain.status["clear registry"] == [], chain.status


@pytest.mark.parametrize("profile", ["ab", "balenaos"])
def test_full_fault_is_refused_by_the_preflight(chains: Chains, profile: str) -> None:
    chain = chains.result(profile, "full")
    assert chain.status["full"] == ["full"], chain.status
    assert chain.free_kib["full"] <= 8 * 1024 < chain.free_kib["before"], chain.free_kib
    msg = failure(chain.runs["full"], chain.host)
    print(f"{chain.host} ({profile}): {msg}")
    found = re.search(r"not enough free space on /mnt/data: (\d+) MiB free, (\d+) MiB needed", msg)
    assert found and int(found.group(1)) < int(found.group(2)), msg
    assert_as_before(chain.states["before"], chain.states["full"], chain.host)
    assert chain.said["clear full"].startswith(f"{chain.host}: cleared the faults full ("), chain.said
    # the free space of before (the user application's heartbeat log grows a little meanwhile)
    assert abs(chain.free_kib["clear full"] - chain.free_kib["before"]) <= 512, chain.free_kib


@pytest.mark.parametrize("profile", ["ab", "balenaos"])
def test_health_fault_is_rolled_back_then_clear_lets_it_update(chains: Chains, profile: str) -> None:
    chain = chains.result(profile, "health")
    assert_rolled_back(chain, "health")
    assert_cleared_and_updated(chain)


@pytest.mark.parametrize("profile", ["ab", "balenaos"])
def test_boot_fault_falls_back_then_clear_lets_it_update(chains: Chains, profile: str) -> None:
    chain = chains.result(profile, "boot")
    assert_rolled_back(chain, "altboot")
    assert_cleared_and_updated(chain)
