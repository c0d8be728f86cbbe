# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry credentials for a private registry (issue 9): fetch and rootfs with
``registry_username``/``registry_password``.

The lab's private registry (``labctl up --private-registry``: docker-registry with htpasswd auth)
holds the releases; its catalog names it as the only registry. One balenaos-profile device (the
hostapp writer: the device's own ``hostapp-update`` pulls, logged in with ``balena login
--password-stdin``) and one ab-profile device (the export writer: skopeo on the device, logged in
with ``skopeo login --password-stdin``). Without credentials and with a wrong password the fetch
fails naming the registry and leaves the device as it was; with the right ones both devices get
the image. The password never shows in the play's output, the results or the device's run log,
and no auth file is left on a device.
"""

from __future__ import annotations

import json
import os
import typing as t
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_steps_prepare as prep
from osfleet_harness import Lab, PlaybookRun, labctl_down, labctl_up
from osfleet_harness import ansible_playbook as run_playbook

LAB_PREFIX = "itra"
LAB_SUFFIX = os.environ.get("OSFLEET_LAB_SUFFIX", "")
KEEP_LABS = os.environ.get("OSFLEET_KEEP_LABS") == "1"
SOURCE, TARGET = prep.SOURCE, prep.TARGET
RUN_LOG = "/mnt/data/balenahup/osfleet-hup.registry-auth.log"

# what a failed fetch must leave as it was, and where credentials could be left behind
DEVICE = r"""
echo "stamp: $(cat /mnt/sysroot/inactive/.osfleet-release.json 2>/dev/null)"
echo "current: $(readlink /mnt/sysroot/inactive/current 2>/dev/null)"
echo "inactive: $(find /mnt/sysroot/inactive -xdev | wc -l)"
echo "cache: $(ls -A /mnt/data/osfleet/images 2>/dev/null | tr '\n' ' ')"
echo "env: $(tr '\n' ' ' < /mnt/boot/resinOS_uEnv.txt)"
"""
LEFTOVERS = r"""
ls -d /run/osfleet/auth.* /run/osfleet/hostapp-update/auth "${HOME:-/root}/.docker/config.json" /root/.docker/config.json \
  /run/containers/0/auth.json /root/.config/containers/auth.json 2>/dev/null
true
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One balenaos and one ab device of the same release, the lab's services with the private registry."""
    prefix = LAB_PREFIX + LAB_SUFFIX
    labctl_down(prefix)
    try:
        labctl_up(prefix, 1, SOURCE, "--private-registry", "--profile", "balenaos")
        inventory = labctl_up(prefix, 1, SOURCE, "--profile", "ab")
        yield Lab.from_inventory(prefix, inventory)
    finally:
        if not KEEP_LABS:
            labctl_down(prefix)


def host_of(lab: Lab, profile: str) -> str:
    return next(h for h in lab.hosts if lab.host_vars[h].get("lab_profile") == profile)


@pytest.fixture(scope="module")
def hosts(lab: Lab) -> dict[str, str]:
    return {"hostapp": host_of(lab, "balenaos"), "export": host_of(lab, "ab")}


@pytest.fixture
def play(lab: Lab, tmp_path: Path) -> Callable[..., PlaybookRun]:
    def run(tasks: list[dict[str, t.Any]], **kwargs: t.Any) -> PlaybookRun:
        book = tmp_path / f"play-{len(list(tmp_path.glob('play-*.yml')))}.yml"
        named = [{"name": f"{i} {next(iter(task))}", **task} for i, task in enumerate(tasks)]
        book.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": named}]))
        return run_playbook(lab, workdir=tmp_path / "ansible", playbook=str(book), **kwargs)
    return run


def fetch(**creds: t.Any) -> dict[str, t.Any]:
    return {"osfleet.hup.fetch": {"catalog": "{{ lab_private_catalog }}", "target_version": TARGET, "run_log": RUN_LOG, **creds},
            "ignore_errors": True}


RIGHT = {"registry_username": "{{ lab_registry_username }}", "registry_password": "{{ lab_registry_password }}"}


def snapshot(lab: Lab, hosts: dict[str, str]) -> dict[str, str]:
    return {kind: lab.sh(host, DEVICE) for kind, host in hosts.items()}


def assert_no_secret(lab: Lab, hosts: dict[str, str], run: PlaybookRun) -> None:
    password = str(lab.group_vars["lab_registry_password"])
    assert password not in run.stdout and password not in run.stderr
    assert password not in json.dumps(run.events)
    for host in hosts.values():
        logs = lab.sh(host, 'cat /mnt/data/balenahup/*.log /run/osfleet/hostapp-update/log 2>/dev/null; true')
        assert password not in logs, f"{host}: the password is in a log on the device"
        assert lab.sh(host, LEFTOVERS).strip() == "", f"{host}: credentials left on the device"


def test_the_private_registry_wants_credentials(lab: Lab) -> None:
    registry = str(lab.group_vars["lab_private_registry"])
    assert registry.startswith("127.0.0.1:")
    catalog = json.loads(Path(str(lab.group_vars["lab_private_catalog"])).read_text())
    assert catalog["registries"] == {"primary": registry}
    host = lab.hosts[0]
    code = lab.sh(host, 'curl -s -o /dev/null -w "%{http_code}" "http://$1/v2/"', registry)
    assert code == "401"


def test_without_credentials_the_fetch_fails_and_changes_nothing(lab: Lab, hosts: dict[str, str], play: Callable[..., PlaybookRun]) -> None:
    registry = str(lab.group_vars["lab_private_registry"])
    before = snapshot(lab, hosts)
    run = play([fetch()])
    export = run.step(hosts["export"], "osfleet.hup.fetch")
    assert export.event == "failed"
    msg = export.result["msg"]
    assert msg.startswith(f"{hosts['export']}: all sources failed: ") and f"registry ({registry}/" in msg, msg
    assert "unauthorized" in msg and f"(the registry {registry} wants credentials: registry_username and registry_password)" in msg, msg
    # the hostapp device fetches nothing ahead: it asks the registry, which wants credentials (a Basic challenge)
    hostapp = run.step(hosts["hostapp"], "osfleet.hup.fetch")
    assert hostapp.event == "failed"
    assert hostapp.result["msg"] == (f"{hosts['hostapp']}: the registry {registry} wants credentials (HTTP 401 with a Basic challenge from "
                                     f"http://{registry}/v2/): give registry_username and registry_password; nothing was changed")
    assert snapshot(lab, hosts) == before


def test_a_wrong_password_fails_naming_the_registry_and_changes_nothing(lab: Lab, hosts: dict[str, str],
                                                                        play: Callable[..., PlaybookRun]) -> None:
    registry = str(lab.group_vars["lab_private_registry"])
    before = snapshot(lab, hosts)
    wrong = {"registry_username": "{{ lab_registry_username }}", "registry_password": "not-the-password"}
    # the rootfs step of a balenaOS device logs in too (its hostapp-update pulls), before it removes anything
    rootfs = {"osfleet.hup.rootfs": {"catalog": "{{ lab_private_catalog }}", "target_version": TARGET, "run_log": RUN_LOG, **wrong},
              "when": "lab_profile == 'balenaos'", "ignore_errors": True}
    run = play([fetch(**wrong), rootfs])
    results = [(host, run.step(host, "osfleet.hup.fetch")) for host in hosts.values()] + [
        (hosts["hostapp"], run.step(hosts["hostapp"], "osfleet.hup.rootfs"))]
    for host, result in results:
        assert result.event == "failed", (host, result.action, result.result)
        msg = result.result["msg"]
        assert msg.startswith(f"{host}: login to the registry {registry} as osfleet-lab failed (HTTP 401 from http://{registry}/v2/)"), msg
        assert msg.endswith("; nothing was changed"), msg
        assert "not-the-password" not in msg
    assert "not-the-password" not in run.stdout
    assert snapshot(lab, hosts) == before
    for host in hosts.values():
        assert lab.sh(host, LEFTOVERS).strip() == ""


def test_with_the_credentials_both_devices_get_the_image(lab: Lab, hosts: dict[str, str], play: Callable[..., PlaybookRun]) -> None:
    registry = str(lab.group_vars["lab_private_registry"])
    rootfs = {"osfleet.hup.rootfs": {"catalog": "{{ lab_private_catalog }}", "target_version": TARGET, "run_log": RUN_LOG, **RIGHT},
              "when": "lab_profile == 'balenaos'"}
    run = play([fetch(**RIGHT), rootfs])
    export = run.step(hosts["export"], "osfleet.hup.fetch")
    assert export.event == "ok", export.result
    assert export.changed and export.result["source"] in ("registry", "delta") and export.result["ref"].startswith(f"{registry}/")
    assert export.result["layout"] and export.result["bytes"] > 0
    hostapp = run.step(hosts["hostapp"], "osfleet.hup.fetch")
    assert hostapp.event == "ok", hostapp.result
    assert hostapp.result["writer"] == "hostapp" and not hostapp.changed
    assert any(f"logged in to {registry} as osfleet-lab" in a for a in hostapp.result["actions"]), hostapp.result["actions"]
    # the hostapp device's own hostapp-update pulled the target from the private registry
    written = run.step(hosts["hostapp"], "osfleet.hup.rootfs")
    assert written.event == "ok", written.result
    assert written.changed and written.result["stamp"]["version"] == TARGET
    assert written.result["attempts"][-1]["ref"].startswith(f"{registry}/")
    assert lab.state(hosts["hostapp"]).inactive_stamp["version"] == TARGET
    assert lab.sh(hosts["export"], "ls /mnt/data/osfleet/images").split() == [export.result["layout"].rsplit("/", 1)[-1]]
    assert_no_secret(lab, hosts, run)
