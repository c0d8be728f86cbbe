#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Wait up to wait seconds more for the hostapp-update that scripts/hostapp_write.sh started
# (osfleet_hostapp_wait): the rootfs step calls it until the job has ended, each call well within
# the step's exec_timeout.

wait=$1
osfleet_hostapp_wait "$wait" waited
