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
# tool=none (no credentials; stdin {registries}): only asks each registry's /v2/ anonymously and
# prints {registries, wants: [those that answer 401 with a Basic challenge: they want credentials]}
# (a token challenge says nothing: anonymous pulls may still be allowed).

tool=$1 scheme=$2 creds=$(cat)
case $tool in balena|skopeo|none) ;; *) fail "registry_login: tool must be balena, skopeo or none, got '$tool'" ;; esac
if [ "$tool" = none ]; then
  # the registries in one jq (a jq start costs ~25 ms of a device's CPU), as shell assignments
  # quoted with @sh: n, and reg_<i> as jq -r printed it in a command substitution
  n=0; reg=""
  # shellcheck disable=SC2016  # jq's variables
  vars=$(printf '%s' "$creds" | jq -r 'def text: if type == "string" then . else tojson end | until(endswith("\n") | not; .[:-1]);
    .registries | "n=\(length)", (range(length) as $i | "reg_\($i)=\(.[$i] | text | @sh)")') || fail "registry_login: no registries"
  eval "$vars"
  i=0; wants=""
  while [ "$i" -lt "$n" ]; do
    eval "reg=\$reg_$i"
    i=$((i + 1))
    head=$(curl -s -o /dev/null -D - -m 10 "$scheme://$reg/v2/" 2>/dev/null | tr -d '\r') || continue
    case $(printf '%s\n' "$head" | head -n 1) in *" 401"*) ;; *) continue ;; esac
    printf '%s\n' "$head" | grep -qi '^www-authenticate: *basic' && wants="$wants$reg
"
  done
  printf '%s' "$creds" | jq -c --arg wants "$wants" '{registries: .registries, wants: ($wants | split("\n") | map(select(length > 0)))}'
  exit 0
fi
authdir=$(osfleet_auth_dir) || exit 1
trap 'rm -rf "$authdir"' EXIT
trap 'exit 143' TERM HUP INT
osfleet_registry_login "$creds" "$tool" "$authdir" "$scheme"
printf '%s' "$creds" | jq -c '{registries: .registries}'
