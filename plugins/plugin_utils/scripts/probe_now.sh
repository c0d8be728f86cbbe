#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The device's clock as part of the device probe (lock: the age of a lock is measured by it).

jq -n --arg now "$(date +%s)" '{now: ($now | tonumber)}'
