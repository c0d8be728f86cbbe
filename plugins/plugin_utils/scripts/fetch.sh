#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The fetch step's act (steps/fetch.py, plugin_utils/writer.py): try the attempts (stdin: a JSON
# object {attempts: [{kind, ref, digest, tag}], auth: null or {username, password, registries}})
# in order, pulling each with skopeo into
# <cache>/.staging-<hex>, verifying it against the catalog digest and moving it to <cache>/<hex>
# only then; the other layouts it made are removed after a success. cache must be a directory of
# its own: made and marked here (.osfleet-cache), never a mount point. insecure=1: plain HTTP / no TLS
# verification. With auth, skopeo logs in first (osfleet_registry_login: an auth file in a private
# directory under the run dir, removed on exit; a failed login fails before anything is touched) and
# pulls with --src-authfile. Prints {attempts: [{kind, ref, ok, error, bytes}], fetched: <hex or "">, bytes}.

cache=$1 insecure=$2 input=$(cat)
osfleet_writer_lock
attempts_in=$(printf '%s' "$input" | jq -c '.attempts') || fail "the fetch input is not JSON"
authfile=""
if [ "$(printf '%s' "$input" | jq -r '.auth != null')" = true ]; then
  authdir=$(osfleet_auth_dir) || exit 1
  trap 'rm -rf "$authdir"' EXIT
  trap 'exit 143' TERM HUP INT
  scheme=https; [ "$insecure" = 1 ] && scheme=http
  osfleet_registry_login "$(printf '%s' "$input" | jq -c '.auth')" skopeo "$authdir" "$scheme"
  authfile=$authdir/auth.json
fi
umask 022
# The image cache is a directory of its own that this script made and marked: never a mount point
# (/mnt/data, /mnt/boot, ...), never a directory that holds files of others. Only what the collection
# made there is ever removed (staging dirs, layouts with an osfleet-fetch.json).
marker=.osfleet-cache
if [ -d "$cache" ]; then
  ! osfleet_mount_point "$cache" || fail "refusing cache_dir $cache: it is a mount point; the image cache must be a directory of its own"
  [ -f "$cache/$marker" ] || [ -z "$(ls -A "$cache")" ] \
    || fail "refusing cache_dir $cache: it is not empty and has no $marker, so osfleet.hup did not make it; give a new or empty directory"
elif [ -e "$cache" ] || [ -L "$cache" ]; then
  fail "refusing cache_dir $cache: it exists and is not a directory"
else
  mkdir -p "$cache" || fail "cannot create $cache"
fi
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
  # bounded like the whole script (exec_timeout): a hung pull must not hold writer.lock for ever.
  # 8>&-: busybox timeout leaves its watcher process behind for up to a second after skopeo ended,
  # with the fds it inherited; with writer.lock among them the next step found the lock held.
  auth=""; [ -n "$authfile" ] && auth=--src-authfile=$authfile
  if out=$(${tmo:+timeout -k 10 "$tmo"} skopeo ${pol:+"$pol"} copy --quiet --preserve-digests ${tls:+"$tls"} ${auth:+"$auth"} "docker://$ref" "oci:$stage:$tag" 2>&1 </dev/null 8>&-); then
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
    case $err in
      *"authentication required"* | *unauthorized* | *denied*)
        [ -n "$authfile" ] || err="$err (the registry ${ref%%/*} wants credentials: registry_username and registry_password)" ;;
    esac
    case $rc in 124 | 137 | 143) [ -n "$tmo" ] && err="skopeo did not finish within $tmo s (exec_timeout), ended: $err" ;; esac
  fi
  if [ -z "$err" ] && [ ! -f "$cache/$marker" ]; then
    # marked with the first layout moved in (a failed fetch leaves the directory as it was)
    echo "osfleet.hup image cache: osfleet.hup.fetch removes the layouts and staging dirs it made here" > "$cache/$marker" \
      || err="cannot mark $cache as the image cache"
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
  # the other layouts this script made (named by a digest, with its osfleet-fetch.json); nothing else
  for d in "$cache"/*; do
    n=${d##*/}
    case $n in *[!0-9a-f]*) continue ;; esac
    [ "${#n}" -eq 64 ] && [ "$n" != "$ok" ] && [ -d "$d" ] && [ ! -L "$d" ] && [ -f "$d/osfleet-fetch.json" ] && rm -rf "$d"
  done
  sync
fi
jq -n --arg attempts "$attempts" --arg ok "$ok" --argjson bytes "$okbytes" \
  '{attempts: ($attempts | split("\n") | map(select(length > 0) | fromjson)), fetched: $ok, bytes: $bytes}'
