# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""labctl: the command line of the virtual device lab (docs/internals.md §4).

    labctl up --devices N [--device-type T] [--os VERSION] [--profile ab|balenaos] [--prefix P]
              [--netns] [--disk-images] [--private-registry]
                             (--profile defaults to $OSFLEET_LAB_PROFILE, else lab.DEFAULT_PROFILE)
    labctl down | status [--json] | services | exec NAME -- CMD | reboot NAME | powercut NAME
           | poweron NAME | reflash NAME [--os VERSION] | link NAME down|up | console NAME [--follow]
           | fault NAME health|boot|registry|full|clear
                                                         (all take --prefix, default "lab")

Exit status: 0 done; 1 a runtime failure (one line on stderr); 2 bad input or a missing host
feature (one line on stderr, nothing made); ``exec`` passes the device command's status through.
``up`` prints the inventory path as its last line on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from . import device as dev
from .faults import CLEAR as FAULT_CLEAR
from .faults import KINDS as FAULT_KINDS
from .lab import (DEFAULT_DEVICE_TYPE, DEFAULT_PROFILE, MAX_DEVICES, PROFILE_ENV, PROFILES, Lab,
                  exec_argv, require_root)
from .util import LabError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labctl", description="virtual balenaOS-like device lab")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="lab", help="lab name (default: lab)")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    up = sub.add_parser("up", parents=[common], help="build, provision and boot devices")
    up.add_argument("--devices", type=int, required=True, help=f"how many (1..{MAX_DEVICES})")
    up.add_argument("--device-type", default=DEFAULT_DEVICE_TYPE)
    up.add_argument("--os", dest="os_version", help="OS version (default: the oldest release)")
    default_profile = os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    up.add_argument("--profile", choices=PROFILES, default=default_profile,
                    help="ab: plain OS roots on the A/B partitions; balenaos: hostapps, booted"
                         f" the balenaOS way (default: ${PROFILE_ENV}, else {DEFAULT_PROFILE})")
    up.add_argument("--netns", action="store_true",
                    help="give each device its own network namespace (SSH still on 127.0.0.1)")
    up.add_argument("--disk-images", action="store_true",
                    help="also build the releases' whole-disk images of the --profile (the advanced update's; slower;"
                         " balenaos: hostapp disks of the --device-type's releases) and put them in the catalog (on the"
                         " first up of a prefix, which starts its services)")
    up.add_argument("--private-registry", action="store_true",
                    help="also start a registry of the releases that wants credentials (htpasswd; user and password"
                         " in the inventory's lab_registry_username/lab_registry_password, its catalog"
                         " lab_private_catalog; on the first up of a prefix, which starts its services)")
    sub.add_parser("down", parents=[common], help="stop and remove everything of the prefix")
    status = sub.add_parser("status", parents=[common], help="devices and their state")
    status.add_argument("--json", action="store_true")
    sub.add_parser("services", parents=[common], help="registry / HTTP / catalog endpoints")
    ex = sub.add_parser("exec", parents=[common], help="run a command on a device over SSH")
    ex.add_argument("name")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for cmd, text in (("reboot", "run reboot on the device, wait for a new boot id"),
                      ("powercut", "cut the power at once (no sync)"),
                      ("poweron", "power on and wait until SSH is up")):
        sub.add_parser(cmd, parents=[common], help=text).add_argument("name")
    reflash = sub.add_parser("reflash", parents=[common],
                             help="power off, write a fresh disk (the release's own layout, the device's identity), power on")
    reflash.add_argument("name")
    reflash.add_argument("--os", dest="os_version", default=None,
                         help="OS version to write (default: the version the device was made with)")
    link = sub.add_parser("link", parents=[common],
                          help="cut (down) or restore (up) a device's SSH link; the device keeps running")
    link.add_argument("name")
    link.add_argument("state", choices=("down", "up"))
    fault = sub.add_parser("fault", parents=[common],
                           help="make the device's next host OS updates fail (health, boot, registry, full) until"
                                " cleared (clear)")
    fault.add_argument("name")
    fault.add_argument("kind", help=f"{', '.join(FAULT_KINDS)} or {FAULT_CLEAR}")
    console = sub.add_parser("console", parents=[common], help="print a device's console log")
    console.add_argument("name")
    console.add_argument("--follow", "-f", action="store_true")
    return parser


def cmd_status(lab: Lab, as_json: bool) -> int:
    rows = lab.status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = "{:<18} {:<20} {:<9} {:<9} {:<12} {:<6} {:<8} {:<5} {:<7} {}"
    print(fmt.format("DEVICE", "TYPE", "PROFILE", "OS", "BOOTED", "PORT", "POWER", "LINK", "RUNNING", "FAULT"))
    for r in rows:
        print(fmt.format(r["device"], r["type"], r["profile"], r["os_version"] or "-",
                         r["root"] or r["booted"] or "-", r["port"], r["power"], r["link"],
                         "yes" if r["running"] else "no", ",".join(r["fault"]) or "-"))
    return 0


def cmd_console(lab: Lab, name: str, follow: bool) -> int:
    lab.require()
    lab.state.device(name)
    ddir = lab.dev_dir(name)
    pos = 0
    while True:
        text = dev.console_text(ddir, pos)
        sys.stdout.write(text)
        sys.stdout.flush()
        pos += len(text.encode())
        if not follow:
            return 0
        time.sleep(0.2)


def cmd_exec(lab: Lab, name: str, command: list[str]) -> int:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("labctl exec: no command given (labctl exec NAME -- CMD)")
    argv = exec_argv(lab, name, command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # ssh's exit status (the command's, or 255) is ours


ROOT_COMMANDS = ("up", "down", "reboot", "powercut", "poweron", "reflash", "link", "fault")


def dispatch(args: argparse.Namespace) -> int:
    lab = Lab(args.prefix)
    if args.cmd in ROOT_COMMANDS:
        require_root()
    if args.cmd == "up":
        print(lab.up(args.devices, args.device_type, args.os_version, args.netns, args.profile,
                     disk_images=args.disk_images, private_registry=args.private_registry))
    elif args.cmd == "down":
        lab.down()
    elif args.cmd == "status":
        return cmd_status(lab, args.json)
    elif args.cmd == "services":
        lab.require()
        services = lab.state.data.get("services") or {}
        print(json.dumps({k: v for k, v in services.items() if k != "processes"}, indent=2))
    elif args.cmd == "exec":
        return cmd_exec(lab, args.name, args.command)
    elif args.cmd == "reboot":
        print(lab.reboot(args.name))
    elif args.cmd == "powercut":
        lab.powercut(args.name)
    elif args.cmd == "poweron":
        lab.poweron(args.name)
    elif args.cmd == "reflash":
        print(lab.reflash(args.name, args.os_version))
    elif args.cmd == "link":
        lab.link(args.name, args.state)
    elif args.cmd == "fault":
        print(lab.fault(args.name, args.kind))
    elif args.cmd == "console":
        return cmd_console(lab, args.name, args.follow)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return dispatch(build_parser().parse_args(argv))
    except LabError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("labctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
