#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The device's clock as part of the device probe (lock: the age of a lock is measured by it).

# (as jq -n prints {now: <seconds>}, without a jq start of its own: ~25 ms of a device's CPU)
printf '{\n  "now": %s\n}\n' "$(date +%s)"
