#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Reboot the device (reboot step, and health's rollback): busybox reboot, detached with setsid and
# its output redirected, with a short sleep so that the command returns before the device goes down
# (0.3 s before; should its exit status be lost all the same, the controller reads the boot id).

setsid sh -c 'sleep 0.5; reboot' >/dev/null 2>&1 </dev/null 7>&- & sleep 0.2
