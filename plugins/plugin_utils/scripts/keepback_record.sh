#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Records the sha256 of the boot partition's keep-back files in record on a balenaOS device
# (osfleet_keepback_record in _lib.sh; patterns on stdin, a JSON list). Prints how many it recorded.
# The lock step records them within scripts/lock_step.sh.

record=$1 patterns=$(cat)
osfleet_keepback_record "$record" "$patterns"
