#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Append one JSON line (entry) to the run log at path on the device (plugin_utils/action.py).

path=$1 entry=$2
mkdir -p "$(dirname "$path")" && printf "%s\n" "$entry" >> "$path"
