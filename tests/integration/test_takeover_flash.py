# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The advanced update's whole-disk write (issue 10): ``osfleet.hup.takeover`` ``state=flashed`` on a
jetson-xavier lab device on 5.1.0 (layout l4t-r32) to 6.1.0 (l4t-r35), from the lab's disk images
(``labctl up --disk-images``).

Check mode shows the steps and writes nothing; a staged image whose bytes were damaged in RAM is
refused before anything is written (the device still boots 5.1.0 on its old partition table) and staged
again (state=staged hashes a staged image anew, removes the damaged one and downloads it again); the
write from a good staging boots 6.1.0 on the l4t-r35 partition table (read from the disk), with
config.json and a NetworkManager connection byte-identical to before, the old data partition's
content gone (the documented loss), a new SSH host key (the one the result names), the flash log
on the new data partition; a second run changes nothing.
"""

from __future__ import annotations

import os
import re
import typing as t
from pathlib import Path

import pytest
import test_steps_prepare as prep

from osfleet_harness import Lab, layout_table as layout

LAB_PREFIX = "ittfl"
SOURCE, TARGET = "5.1.0", "6.1.0"
JX = "jetson-xavier"
STAGING = "/run/osfleet/takeover"
CONNECTION = "system-connections/osfleet-lab-wifi"


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    return make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 1, SOURCE, "ab", "--device-type", JX, "--disk-images")


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> prep.Steps:
    return prep.Steps(lab, tmp_path_factory.mktemp("flash"))


def takeover(**args: t.Any) -> dict[str, t.Any]:
    return prep.step("takeover", catalog="{{ hup_catalog }}", target_version=TARGET, **args)


def disk(steps: prep.Steps) -> str:
    return steps.lab.disk(steps.host)


def table(steps: prep.Steps) -> list[dict[str, t.Any]]:
    return steps.lab.partition_table(steps.host)


def sha(steps: prep.Steps, path: str) -> str:
    return steps.lab.sh(steps.host, 'sha256sum < "$1" | cut -d" " -f1', path).strip()


def trust_host_key(steps: prep.Steps, host_key: str) -> None:
    """What an operator does with the result's host_key (ansible.builtin.known_hosts): the lab's
    known_hosts names the device's new key from now on."""
    hvars = steps.lab.host_vars[steps.host]
    (path,) = re.findall(r'UserKnownHostsFile="([^"]+)"', hvars["ansible_ssh_common_args"]) or re.findall(
        r"UserKnownHostsFile=(\S+)", hvars["ansible_ssh_common_args"])
    name = f"[127.0.0.1]:{hvars['ansible_port']}"
    lines = [line for line in Path(path).read_text().splitlines() if line.split(" ", 1)[0] != name]
    Path(path).write_text("\n".join([*lines, f"{name} {' '.join(host_key.split()[:2])}"]) + "\n")


def test_check_mode_shows_the_write_and_touches_nothing(steps: prep.Steps) -> None:
    staged = steps.play([takeover()])
    assert staged.rc == 0, staged.summary()
    before = disk(steps)
    run = steps.play([takeover(state="flashed")], "--check", "--diff")
    assert run.rc == 0, run.summary()
    (res,) = steps.results(run)
    assert res.changed and any("wrote the whole disk /dev/" in a for a in res.result["actions"]), res.result["actions"]
    assert res.result["diff"]["before"]["version"] == SOURCE
    assert res.result["diff"]["before"]["layout"] == layout("l4t-r32")
    assert disk(steps) == before


def test_a_damaged_staged_image_is_refused_then_staged_again(steps: prep.Steps) -> None:
    assert steps.play([takeover()]).rc == 0
    before = disk(steps)
    assert table(steps) == layout("l4t-r32")
    # one byte of the staged image changed in RAM after its download was verified
    steps.lab.sh(steps.host, 'printf X | dd of="$1/image.img.gz" bs=1 seek=4096 conv=notrunc 2>/dev/null', STAGING)
    run = steps.play([takeover(state="flashed")])
    assert run.rc != 0, run.summary()
    (res,) = steps.results(run)
    assert res.result["msg"].startswith(f"{steps.host}: "), res.result["msg"]
    assert "damaged in RAM" in res.result["msg"] and "nothing was written to the disk" in res.result["msg"], res.result["msg"]
    assert not res.changed
    assert disk(steps) == before, "the device runs 5.1.0 from the same boot, on the same partition table"
    # staging again hashes the staged image anew: the damaged one is removed and downloaded again
    restage = steps.play([takeover(state="staged")])
    assert restage.rc == 0, restage.summary()
    (res,) = steps.results(restage)
    actions = " | ".join(res.result["actions"])
    assert res.changed and res.result["downloaded"] == res.result["staged"]["size"], res.result
    assert "removed the disk image staged earlier" in actions and "damaged in RAM since it was verified" in actions, actions
    assert sha(steps, f"{STAGING}/image.img.gz") == res.result["staged"]["sha256"]
    assert disk(steps) == before
    assert steps.play([takeover(state="absent")]).rc == 0


def test_the_write_boots_the_target_on_the_new_layout_with_the_kept_files(steps: prep.Steps) -> None:
    steps.lab.sh(steps.host, 'mkdir -p /mnt/boot/system-connections && printf "[connection]\\nid=lab-wifi\\ntype=wifi\\n" > "/mnt/boot/$1"'
                 ' && printf "precious\\n" > /mnt/data/user-app/precious.txt && sync', CONNECTION)
    kept = {f: sha(steps, f"/mnt/boot/{f}") for f in ("config.json", CONNECTION)}
    old_key = steps.lab.sh(steps.host, "cat /mnt/state/ssh/ssh_host_ed25519_key.pub").split()[1]
    staged = steps.play([takeover()])
    assert staged.rc == 0, staged.summary()
    assert table(steps) == layout("l4t-r32")

    run = steps.play([takeover(state="flashed", flash_timeout=300)], "--diff")
    assert run.rc == 0, run.summary()
    (res,) = steps.results(run)
    result = res.result
    assert res.changed and result["msg"].startswith(f"{steps.host}: "), result
    assert result["diff"]["before"] == {"version": SOURCE, "layout": layout("l4t-r32")}
    assert result["diff"]["after"] == {"version": TARGET, "layout": layout("l4t-r35")}
    assert {k["path"] for k in result["flashed"]["keep"]} >= {"config.json", CONNECTION}
    new_key = result["host_key"]
    assert new_key.split()[1] != old_key, "the new disk's state partition has a new host key"
    trust_host_key(steps, new_key)

    assert f"os: {TARGET}" in disk(steps)
    assert table(steps) == layout("l4t-r35"), "the disk holds the l4t-r35 partition table"
    assert {f: sha(steps, f"/mnt/boot/{f}") for f in kept} == kept, "the kept files are byte-identical"
    assert steps.lab.sh(steps.host, '[ -e /mnt/data/user-app/precious.txt ] && echo there || echo gone').strip() == "gone"
    assert steps.lab.sh(steps.host, "cat /mnt/state/ssh/ssh_host_ed25519_key.pub").split()[1] == new_key.split()[1]
    log = steps.lab.sh(steps.host, 'cat "$1"', result["log"])
    assert "restored the kept files" in log and "re-read the partition table" in log, log

    again = steps.play([takeover(state="flashed")])
    assert again.rc == 0, again.summary()
    (res,) = steps.results(again)
    assert not res.changed and "runs 6.1.0 on the disk image's partition layout" in res.result["msg"], res.result
    assert f"os: {TARGET}" in disk(steps) and table(steps) == layout("l4t-r35")


def test_a_reflash_after_the_takeover_brings_the_source_back(steps: prep.Steps) -> None:
    """``labctl reflash`` of the device the takeover left on 6.1.0 (the rehearsal's way back to the
    source release before its next drill): 5.1.0 on the l4t-r32 partition table, answering over
    SSH. The reflash gives the disk the device's lab host key, while the lab's known_hosts pins the
    key of the takeover (above, as the advanced role does): without the reflash pinning its key
    again, every SSH to the device failed host key verification (a rehearsal waited for it)."""
    assert f"os: {TARGET}" in disk(steps), "the takeover above left the device on the target"
    assert steps.lab.labctl("reflash", steps.host, "--os", SOURCE, timeout=180).stdout.strip() == SOURCE
    assert f"os: {SOURCE}" in disk(steps) and table(steps) == layout("l4t-r32")
    [status] = steps.lab.status()
    assert status["running"] and status["os_version"] == SOURCE, status
