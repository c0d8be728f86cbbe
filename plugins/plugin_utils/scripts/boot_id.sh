#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The device's boot id: it changes with every boot (reboot and health wait for a new one).

cat /proc/sys/kernel/random/boot_id
