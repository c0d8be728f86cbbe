#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# `make bench` step_overhead (tests/tools/bench.py): the baseline updater of a balenaOS lab device,
# the reference updater's shape in one SSH session: the device's own `hostapp-update -i REF`
# (fetch through the engine, write the spare root, and the new OS's hooks: boot files and the
# bootloader armed), then reboot. bench.py puts the preamble of plugins/plugin_utils/scripts/_lib.sh
# in front of it, waits for the new boot and commits with update_commit.sh. Prints "boot_id <id>"
# first and "phase <name> <uptime>" lines.
#
# Usage: sh -s -- REF

ref=$1
printf 'boot_id %s\n' "$(cat /proc/sys/kernel/random/boot_id)"
phase() { printf 'phase %s %s\n' "$1" "$(cut -d' ' -f1 /proc/uptime)"; }
phase start
hostapp-update -i "$ref" </dev/null >/dev/null 2>&1 || fail "hostapp-update -i $ref failed"
sync
phase written
setsid sh -c 'sleep 1; reboot' >/dev/null 2>&1 </dev/null & sleep 0.5
