#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The registry check of the preflight, part of the device probe: with enabled=1, GET <scheme>://<r>/v2/
# from the device for each registry of the JSON list on stdin ([{"name": ..., "registry": ...}]).
# Prints {now, registries: [{name, registry, error}], skipped}; a registry answers when /v2/ returns
# 200 or 401 (auth required is still an answer).
# unless_versions: space-separated versions; when the VERSION of /etc/os-release is one of them (the
# device already runs the target, most likely: a no-op needs no registry), the check is skipped and
# skipped is true. The preflight decides (steps/preflight.py registry_check_missing) whether it
# needs the check after all, in a second round trip.

enabled=$1 scheme=$2 unless_versions=$3 registries=$(cat)
now=$(date +%s); skipped=false
if [ "$enabled" = 1 ] && [ -n "$unless_versions" ] && [ -r /etc/os-release ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
      VERSION=*)
        v=${line#VERSION=}; v=${v#\"}; v=${v%\"}
        case " $unless_versions " in *" $v "*) [ -n "$v" ] && enabled=0 skipped=true ;; esac ;;
    esac
  done < /etc/os-release
fi
# what each registry came to: the arguments of the last jq (name_<i>, registry_<i>, error_<i>)
set --
n=0
if [ "$enabled" = 1 ]; then
  # the registries in one jq (a jq start costs ~25 ms of a device's CPU), as shell assignments
  # quoted with @sh: n, and name_<i>, reg_<i> as jq -r printed each in a command substitution
  # shellcheck disable=SC2016  # jq's variables
  vars=$(printf '%s' "$registries" | jq -r 'def text: if type == "string" then . else tojson end | until(endswith("\n") | not; .[:-1]);
    if type == "array" then . else error("the registries are not a JSON list") end
    | "n=\(length)", (range(length) as $i | .[$i] | "name_\($i)=\(.name | text | @sh) reg_\($i)=\(.registry | text | @sh)")')
  eval "$vars"
  i=0; name=""; reg=""
  while [ "$i" -lt "$n" ]; do
    eval "name=\$name_$i reg=\$reg_$i"
    # curl's error text, in a file of its own (a predictable name in /tmp is a symlink attack)
    errf=$(mktemp) || fail "cannot create a temporary file for curl's error"
    code=$(curl -sS -o /dev/null -m 5 -w '%{http_code}' "$scheme://$reg/v2/" 2>"$errf" </dev/null); rc=$?
    err=$(tr '\n' ' ' < "$errf"); rm -f "$errf"
    if [ "$rc" = 0 ]; then
      case $code in 200|401) err="" ;; *) err="HTTP $code from $scheme://$reg/v2/" ;; esac
    else
      [ -n "$err" ] || err="curl exit $rc"
    fi
    set -- "$@" --arg "name_$i" "$name" --arg "registry_$i" "$reg" --arg "error_$i" "$err"
    i=$((i + 1))
  done
fi
# shellcheck disable=SC2016  # jq's variables
jq -n "$@" --arg now "$now" --argjson n "$n" --argjson skipped "$skipped" \
  '$ARGS.named as $a | {now: ($now | tonumber), registries: [range($n) | tostring as $i
     | {name: $a["name_" + $i], registry: $a["registry_" + $i], error: $a["error_" + $i]}], skipped: $skipped}'
