#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The fetch step's act (steps/fetch.py, plugin_utils/writer.py): try the attempts (stdin: a JSON
# list of {kind, ref, digest, tag}) in order, pulling each with skopeo into
# <cache>/.staging-<hex>, verifying it against the catalog digest and moving it to <cache>/<hex>
# only then; other layouts are removed after a success. insecure=1: plain HTTP / no TLS
# verification. Prints {attempts: [{kind, ref, ok, error, bytes}], fetched: <hex or "">, bytes}.

cache=$1 insecure=$2 attempts_in=$(cat)
osfleet_writer_lock
umask 022
mkdir -p "$cache" || fail "cannot create $cache"
rm -rf "$cache"/.staging-*
tls=""; [ "$insecure" = 1 ] && tls=--src-tls-verify=false
pol=""; [ -f /etc/containers/policy.json ] || pol=--insecure-policy
tmo=""; [ "${OSFLEET_EXEC_TIMEOUT:-0}" -gt 0 ] 2>/dev/null && tmo=$OSFLEET_EXEC_TIMEOUT
n=$(osfleet_length "$attempts_in") || fail "the attempts are not a JSON list"
attempts=""; ok=""; okbytes=0; i=0
while [ "$i" -lt "$n" ]; do
  kind=$(osfleet_at "$attempts_in" "$i" kind); ref=$(osfleet_at "$attempts_in" "$i" ref)
  digest=$(osfleet_at "$attempts_in" "$i" digest); tag=$(osfleet_at "$attempts_in" "$i" tag)
  i=$((i + 1))
  hex=${digest#sha256:}
  stage="$cache/.staging-$hex"
  rm -rf "$stage"
  err=""; bytes=0
  # bounded like the whole script (exec_timeout): a hung pull must not hold writer.lock for ever
  if out=$(${tmo:+timeout -k 10 "$tmo"} skopeo ${pol:+"$pol"} copy --quiet --preserve-digests ${tls:+"$tls"} "docker://$ref" "oci:$stage:$tag" 2>&1 </dev/null); then
    if err=$(osfleet_verify_layout "$stage" "$digest"); then
      m="$stage/blobs/sha256/$hex"
      bytes=$(( $(jq '[.config.size, .layers[].size] | add' "$m") + $(wc -c < "$m") ))
      jq -n --arg kind "$kind" --arg ref "$ref" --arg digest "$digest" --argjson bytes "$bytes" \
        --arg at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        '{kind: $kind, ref: $ref, digest: $digest, bytes: $bytes, fetched_at: $at}' > "$stage/osfleet-fetch.json" \
        || err="cannot write $stage/osfleet-fetch.json"
    fi
  else
    rc=$?
    err=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 2 \
      | sed 's/^time="[^"]*" level=[a-z]* msg="\(.*\)"$/\1/' | tr '\n' ' ' | sed 's/ *$//')
    [ -n "$err" ] || err="skopeo failed"
    case $rc in 124 | 137 | 143) [ -n "$tmo" ] && err="skopeo did not finish within $tmo s (exec_timeout), ended: $err" ;; esac
  fi
  if [ -z "$err" ]; then
    sync
    rm -rf "${cache:?}/$hex"
    if mv "$stage" "$cache/$hex"; then ok=$hex; okbytes=$bytes; sync; else err="cannot move the layout into $cache/$hex"; fi
  fi
  attempts="$attempts$(jq -nc --arg kind "$kind" --arg ref "$ref" --arg error "$err" --argjson bytes "$bytes" \
    '{kind: $kind, ref: $ref, ok: ($error == ""), error: $error, bytes: $bytes}')
"
  rm -rf "$stage"
  [ -n "$ok" ] && break
done
if [ -n "$ok" ]; then
  for d in "$cache"/*; do
    [ -d "$d" ] && [ "${d##*/}" != "$ok" ] && rm -rf "$d"
  done
  sync
fi
jq -n --arg attempts "$attempts" --arg ok "$ok" --argjson bytes "$okbytes" \
  '{attempts: ($attempts | split("\n") | map(select(length > 0) | fromjson)), fetched: $ok, bytes: $bytes}'
