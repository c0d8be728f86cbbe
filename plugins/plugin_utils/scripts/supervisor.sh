#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The supervisor step's act (steps/supervisor.py): op=stop|start|update. update runs
# update-balena-supervisor with each image of the JSON list on stdin in turn (-t with
# insecure=1) and prints the image that worked. Every image is pulled by its digest
# (<registry>/<repo>:v<version>@sha256:<hex>, the digest from the catalog): one by tag only is
# refused before anything is pulled.

op=$1 insecure=$2 images=$(cat)
case $op in
  # 7>&-: a service started from here must not keep the run's watchdog lock (_lib.sh) for ever
  stop|start) systemctl "$op" balena-supervisor 7>&- || fail "systemctl $op balena-supervisor failed" ;;
  update)
    errs=""
    # the images in one jq (a jq start costs ~25 ms of a device's CPU), as shell assignments quoted
    # with @sh: n, and img_<i> as jq -r printed it in a command substitution
    n=0; img=""
    # shellcheck disable=SC2016  # jq's variables
    vars=$(printf '%s' "$images" | jq -r 'def text: if type == "string" then . else tojson end | until(endswith("\n") | not; .[:-1]);
      if type == "array" then . else error("the images are not a JSON list") end
      | "n=\(length)", (range(length) as $i | "img_\($i)=\(.[$i] | text | @sh)")') || fail "the images are not a JSON list"
    eval "$vars"
    i=0
    while [ "$i" -lt "$n" ]; do
      eval "img=\$img_$i"
      i=$((i + 1))
      hex=${img##*@sha256:}
      case $img in *@sha256:*) ;; *) fail "refusing supervisor image $img: not pulled by digest (<image>@sha256:<hex>)" ;; esac
      case $hex in *[!0-9a-f]*) fail "refusing supervisor image $img: not pulled by digest (<image>@sha256:<hex>)" ;; esac
      [ "${#hex}" -eq 64 ] || fail "refusing supervisor image $img: not pulled by digest (<image>@sha256:<hex>)"
    done
    i=0
    while [ "$i" -lt "$n" ]; do
      eval "img=\$img_$i"
      i=$((i + 1))
      tls=""; [ "$insecure" = 1 ] && tls=-t
      if out=$(update-balena-supervisor -i "$img" ${tls:+"$tls"} 2>&1 </dev/null 7>&-); then printf '%s\n' "$img"; exit 0; fi
      errs="$errs$img: $(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 2 | tr '\n' ' '); "
    done
    fail "update-balena-supervisor failed from every registry: $errs" ;;
  *) fail "unknown operation $op" ;;
esac
