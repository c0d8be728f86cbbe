#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# On a balenaOS (hostapp) device (plugin_utils/hooks.py, bootenv state=rolled_back): puts the env
# and the boot files back for the running OS with the running OS's own hooks, the way
# hostapp-update recovers from a failed hook: DURING_UPDATE=0 hostapp-update-hooks. Their output
# goes to stderr; the exit status is theirs.

command -v hostapp-update-hooks >/dev/null 2>&1 || fail "the device has no hostapp-update-hooks"
DURING_UPDATE=0 hostapp-update-hooks >&2
rc=$?
sync
exit "$rc"
