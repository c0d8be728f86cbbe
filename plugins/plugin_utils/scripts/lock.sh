#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The lock file's compare-and-swap alone (osfleet_lock_cas in _lib.sh: op=write|refresh|remove,
# expect, doc); the lock step runs it within scripts/lock_step.sh.

op=$1 expect=$2 doc=$3
osfleet_lock_cas "$op" "$expect" "$doc"
