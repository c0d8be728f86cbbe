# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A model device for the switch steps' unit tests: files on the boot and state partitions and in
both roots' /resin-boot, turned into the probe's JSON, and the plans' file operations applied to it.

It lets a test run decide → apply → decide again (the steps' verify) without a device.
"""

from __future__ import annotations

import hashlib
import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils import markers
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, parse_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import Op, validate_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import SwitchPlan
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import BootenvArgs, decide_bootenv, plan_arm
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootfiles import BootfilesArgs, decide_bootfiles
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe, parse_switch_probe
from documented import documented

ROOTS = {"resin-rootA": 2, "resin-rootB": 3}
DIGEST_OLD = "sha256:" + "a" * 64
DIGEST_NEW = "sha256:" + "b" * 64


def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def md5(data: str) -> str:
    return hashlib.md5(data.encode()).hexdigest()


def payload_old() -> dict[str, str]:
    return {
        "bzImage": "kernel 2.88.4",
        "EFI/BOOT/bootx64.efi": "efi 2.88.4",
        "config.txt": "config from the OS",
        "splash/balena-logo.png": "logo from the OS",
        "extra_uEnv.txt": "os_bc_lim=3\n",
        "overlays/a.dtbo": "overlay a",
        "balenaos.fingerprint": "fingerprint shipped",
    }


def payload_new() -> dict[str, str]:
    files = payload_old()
    files.update({"bzImage": "kernel 2.113.0", "EFI/BOOT/bootx64.efi": "efi 2.113.0", "overlays/b.dtbo": "overlay b (new)"})
    return files


@dataclass
class Model:
    """Files (text) by partition; the roots' payloads; versions, stamps and services."""

    active: str = "resin-rootA"
    version: str = "2.88.4"
    inactive_version: str = "2.113.0"
    boot: dict[str, str] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    active_payload: dict[str, str] = field(default_factory=payload_old)
    inactive_payload: dict[str, str] = field(default_factory=payload_new)
    active_stamp: dict[str, t.Any] | None = None
    inactive_stamp: dict[str, t.Any] | None = None
    capacity: int = 10 * 1024 * 1024
    rollback_health_state: str = ""
    services: dict[str, str] = field(default_factory=dict)
    boot_id: str = "boot-1"
    grub: bool = False
    bad_payload: tuple[str, ...] = ()
    sysroot_payload: bool = True
    #: a balenaOS (hostapp) device: the roots hold hostapps; its keep-back record (path -> content)
    hostapp: bool = False
    keepback_record: dict[str, str] | None = None

    @classmethod
    def fresh(cls, **kw: t.Any) -> Model:
        """A device on 2.88.4 (rootA), committed, boot partition = old payload + device config."""
        model = cls(**kw)
        if not model.boot:
            model.boot = {k: v for k, v in payload_old().items() if k != "balenaos.fingerprint"}
            model.boot.update({"config.json": '{"uuid": "u1"}', "config.txt": "user config", "splash/balena-logo.png": "user logo"})
            if model.grub:
                model.boot["grub/grubenv"] = grubenv({"resin_root_part": "2", "upgrade_available": "0", "bootcount": "0"})
            else:
                model.boot["resinOS_uEnv.txt"] = "resin_root_part=2\nupgrade_available=0\n"
        if model.active_stamp is None:
            model.active_stamp = {"version": model.version, "digest": DIGEST_OLD, "device_type": "genericx86-64-ext"}
        if model.inactive_stamp is None:
            model.inactive_stamp = {"version": model.inactive_version, "digest": DIGEST_NEW, "device_type": "genericx86-64-ext"}
        return model

    @property
    def inactive(self) -> str:
        return "resin-rootB" if self.active == "resin-rootA" else "resin-rootA"

    # -- the probe
    def used(self) -> int:
        return sum(len(v.encode()) for v in self.boot.values())

    def raw(self) -> dict[str, t.Any]:
        boot = self.boot
        grub_path = next((f"/mnt/boot/{n}" for n in ("grub/grubenv", "EFI/BOOT/grubenv") if n in boot), "")
        return {
            "os_release": f"ID=balena-os\nVERSION={self.version}\nSLUG=genericx86-64-ext\n",
            "active_label": self.active,
            "inactive_label": self.inactive,
            "active_dev": "/dev/loop9p2",
            "inactive_dev": "/dev/loop9p3",
            "inactive_mounted": "1",
            "uenv": boot.get("resinOS_uEnv.txt", "").rstrip("\n"),
            "uenv_present": "1" if "resinOS_uEnv.txt" in boot else "0",
            "bootcount": boot.get("bootcount.env", "").rstrip("\n"),
            "bootcount_present": "1" if "bootcount.env" in boot else "0",
            "extra_uenv": boot.get("extra_uEnv.txt", "").rstrip("\n"),
            "grubenv_path": grub_path,
            "grubenv": boot[grub_path[len("/mnt/boot/"):]] if grub_path else "",
            "markers": " ".join(m for m in markers.STOP_REMOVES + markers.ARM_REMOVES if m in self.state and m != markers.ROLLBACK_MARKER),
            "df": "",
            "services": "".join(f"{k}={v}\n" for k, v in self.services.items()),
            "active_stamp": json.dumps(self.active_stamp) if self.active_stamp else "",
            "inactive_stamp": json.dumps(self.inactive_stamp) if self.inactive_stamp else "",
            "inactive_os_release": f"VERSION={self.inactive_version}\n" if self.inactive_version else "",
            "boot_id": self.boot_id,
            "rollback_health_state": self.rollback_health_state,
            "active_hostapp": f"hostapps/{'c' * 64} sha256:{'1' * 64}" if self.hostapp else "",
            "inactive_hostapp": f"hostapps/{'d' * 64} sha256:{'2' * 64}" if self.hostapp else "",
            "hostapp_update": "present" if self.hostapp else "absent",
            "extra": "",
        }

    def dev(self) -> DeviceState:
        return parse_state(self.raw())

    @staticmethod
    def _lines(files: dict[str, str]) -> tuple[str, str, str]:
        sha_text = "".join(f"{sha(v)}  ./{k}\n" for k, v in sorted(files.items()))
        size_text = "".join(f"{len(v.encode())} ./{k}\n" for k, v in sorted(files.items()))
        md5_text = "".join(f"{md5(v)}  ./{k}\n" for k, v in sorted(files.items()))
        return sha_text, size_text, md5_text

    def switch_raw(self, listed: bool = True) -> dict[str, str]:
        """What the switch probe prints (scripts/probe_switch.sh)."""
        marker = self.state.get(markers.ROLLBACK_MARKER)
        raw = {
            "listed": "1" if listed else "0",
            "boot_statfs": f"{self.capacity - self.used()} 1" if listed else "",
            "health_variables_present": "1" if markers.HEALTH_VARIABLES_FILE in self.state else "0",
            "health_variables": self.state.get(markers.HEALTH_VARIABLES_FILE, "").rstrip("\n"),
            "rollback_marker_present": "1" if marker is not None else "0",
            "rollback_marker": (marker or "").rstrip("\n"),
            "hostapp": "1" if self.hostapp else "0",
            "keepback_present": "1" if self.keepback_record is not None else "0",
            "keepback_record": "".join(f"{sha(v)}  ./{k}\n" for k, v in sorted((self.keepback_record or {}).items())),
        }
        if listed:
            raw["boot_sha"], raw["boot_size"], raw["boot_md5"] = self._lines(self.boot)
            for side, files, bad in (("active", self.active_payload, ()), ("inactive", self.inactive_payload, self.bad_payload)):
                raw[f"{side}_present"] = "1" if self.sysroot_payload else "0"
                raw[f"{side}_sha"], raw[f"{side}_size"], raw[f"{side}_md5"] = self._lines(files) if self.sysroot_payload else ("", "", "")
                raw[f"{side}_other"] = "".join(f"./{b}\n" for b in bad) if self.sysroot_payload else ""
        return raw

    def probe(self, listed: bool = True) -> SwitchProbe:
        return parse_switch_probe(self.switch_raw(listed))

    def both(self, listed: bool = True) -> tuple[DeviceState, SwitchProbe]:
        return self.dev(), self.probe(listed)

    # -- acting
    def apply(self, ops: list[Op]) -> None:
        validate_ops(ops)
        for op, dst, value in ops:
            part, rel = (self.boot, dst[len("/mnt/boot/"):]) if dst.startswith("/mnt/boot/") else (self.state, dst[len("/mnt/state/"):])
            if op == "del":
                part.pop(rel, None)
            elif op == "put":
                part[rel] = value
            else:
                prefix, _sep, path = value.partition("/resin-boot/")
                source = self.active_payload if prefix.endswith("/active") else self.inactive_payload
                part[rel] = source[path]
        if self.used() > self.capacity:
            raise AssertionError("the model's boot partition overflowed")

    def record_keepback(self, patterns: t.Sequence[str] | None = None) -> None:
        """What the lock step records on a hostapp device: the keep-back files of the boot partition
        (``patterns``: the lock step's, default the built-in keep-back list)."""
        from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, keepback  # pylint: disable=import-outside-toplevel
        patterns = hooks.keepback_patterns() if patterns is None else patterns
        self.keepback_record = {
            name: text for name, text in self.boot.items()
            if any(name == p or (p.endswith("/") and name.startswith(p)) for p in patterns) and name not in keepback.ENV_FILES
        }

    def run_hooks(self, during_update: int) -> None:
        """The hostapp-update hooks of the lab (1-bootfiles, 80-rollback, 99-resin-uboot): 1 = the new
        OS's (the inactive hostapp's payload, env armed for it), 0 = the running OS's."""
        from ansible_collections.osfleet.hup.plugins.plugin_utils import keepback  # pylint: disable=import-outside-toplevel
        payload = self.inactive_payload if during_update else self.active_payload
        for name, text in payload.items():
            rule = keepback.rule_for(name)
            if name == keepback.FINGERPRINT_FILE or (rule != keepback.RULE_COPY and name in self.boot):
                continue
            self.boot[name] = text
        if during_update:
            self.state.update({markers.HEALTH_BREADCRUMB: "", markers.ALTBOOT_BREADCRUMB: "", markers.HEALTH_VARIABLES_FILE: markers.HEALTH_VARIABLES})
            for name in (markers.HEALTH_TRIGGERED, markers.ALTBOOT_TRIGGERED, markers.HEALTH_FAILED):
                self.state.pop(name, None)
        else:
            for name in markers.MARKERS:
                self.state.pop(name, None)
        root = self.inactive if during_update else self.active
        self.boot["resinOS_uEnv.txt"] = f"resin_root_part={ROOTS[root]:x}\nupgrade_available={during_update}\n"
        self.boot.pop("bootcount.env", None)

    def env(self) -> dict[str, str]:
        if self.grub:
            text = self.boot["grub/grubenv"]
            return dict(line.split("=", 1) for line in text.split("\n")[1:] if "=" in line and not line.startswith("#"))
        env = dict(line.split("=", 1) for line in self.boot.get("resinOS_uEnv.txt", "").splitlines() if "=" in line)
        if "bootcount.env" in self.boot:
            env.update(line.split("=", 1) for line in self.boot["bootcount.env"].splitlines() if "=" in line)
        return env

    def reboot(self) -> None:
        """Boot the root the env names (no bootcount fallback here; tests set that up by hand)."""
        part = int(self.env()["resin_root_part"], 10 if self.grub else 16)
        booted = next(label for label, index in ROOTS.items() if index == part)
        if booted != self.active:
            self.active_payload, self.inactive_payload = self.inactive_payload, self.active_payload
            self.active_stamp, self.inactive_stamp = self.inactive_stamp, self.active_stamp
            self.version, self.inactive_version = self.inactive_version, self.version
            self.active = booted
        self.boot_id = self.boot_id + "+"


def grubenv(env: dict[str, str]) -> str:
    body = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in env.items())
    return body + "#" * (1024 - len(body.encode()))


#: the markers an armed device has
ARMED_MARKERS = {markers.HEALTH_BREADCRUMB: "", markers.ALTBOOT_BREADCRUMB: "", markers.HEALTH_VARIABLES_FILE: "BALENAOS_ROLLBACK_VPNONLINE=0\n"}


def bootfiles_plan(dev: DeviceState, probe: SwitchProbe, *, assume_staged: bool = False, expected_digest: str | None = None,
                   **given: t.Any) -> SwitchPlan:
    """The bootfiles decision with the module's documented defaults and the options ``given``."""
    args = BootfilesArgs.from_args(documented("bootfiles", **given), expected_digest)
    return decide_bootfiles(args, dev, probe, assume_staged=assume_staged)


def bootenv_plan(dev: DeviceState, probe: SwitchProbe, *, now: str = "", assume_staged: bool = False, **given: t.Any) -> SwitchPlan:
    """The bootenv decision with the module's documented defaults and the options ``given``."""
    args = BootenvArgs.from_args(documented("bootenv", **given), given.get("expected_digest"))
    return decide_bootenv(args, dev, probe, now=now, assume_staged=assume_staged)


def bootfiles_done(model: Model) -> Model:
    model.apply(bootfiles_plan(*model.both()).ops)
    return model


def armed(model: Model) -> Model:
    bootfiles_done(model)
    model.apply(plan_arm(*model.both()).ops)
    return model
