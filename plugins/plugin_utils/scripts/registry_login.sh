#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The fetch step's check of the registry credentials on a balenaOS device, whose image the rootfs
# step's hostapp-update pulls (plugin_utils/writer.py HostappWriter.login_script): log in to each
# registry of the credentials (stdin: {username, password, registries}) with tool (balena or
# skopeo; osfleet_registry_login) into a private directory under the run dir, removed again on
# exit: nothing is kept on the device. Prints {registries: [...]} once every login succeeded.

tool=$1 scheme=$2 creds=$(cat)
case $tool in balena|skopeo) ;; *) fail "registry_login: tool must be balena or skopeo, got '$tool'" ;; esac
authdir=$(osfleet_auth_dir) || exit 1
trap 'rm -rf "$authdir"' EXIT
trap 'exit 143' TERM HUP INT
osfleet_registry_login "$creds" "$tool" "$authdir" "$scheme"
printf '%s' "$creds" | jq -c '{registries: .registries}'
