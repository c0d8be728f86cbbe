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
# The input in one jq (a jq start costs ~25 ms of a device's CPU), as shell assignments quoted with
# @sh: auth_json (the credentials, "" for none), n (how many attempts) and per attempt <i>
# kind_<i>, ref_<i>, digest_<i>, tag_<i> (the text of each value) and kindj_<i>, refj_<i>,
# digestj_<i> (that text as a JSON string, for osfleet-fetch.json). The text of a value is what
# jq -r printed for it in a command substitution: JSON for what is not a string, its trailing line
# breaks cut.
# shellcheck disable=SC2016  # jq's variables
vars=$(printf '%s' "$input" | jq -r '
  def text: if type == "string" then . else tojson end | until(endswith("\n") | not; .[:-1]);
  "auth_json=\(if .auth != null then .auth | tojson else "" end | @sh)",
  (.attempts // [] | if type == "array" then . else error("the attempts are not a JSON list") end
   | "n=\(length)",
     (to_entries[] | .key as $i | .value
      | "kind_\($i)=\(.kind | text | @sh) ref_\($i)=\(.ref | text | @sh) digest_\($i)=\(.digest | text | @sh) tag_\($i)=\(.tag | text | @sh)",
        "kindj_\($i)=\(.kind | text | tojson | @sh) refj_\($i)=\(.ref | text | tojson | @sh) digestj_\($i)=\(.digest | text | tojson | @sh)"))') \
  || fail "the fetch input is not JSON {attempts: [...], auth}"
auth_json=""; n=0
eval "$vars"
authfile=""
if [ -n "$auth_json" ]; then
  authdir=$(osfleet_auth_dir) || exit 1
  trap 'rm -rf "$authdir"' EXIT
  trap 'exit 143' TERM HUP INT
  scheme=https; [ "$insecure" = 1 ] && scheme=http
  osfleet_registry_login "$auth_json" skopeo "$authdir" "$scheme"
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
# what each attempt came to goes to the last jq as its arguments: kind_<i>, ref_<i>, error_<i>, bytes_<i>
set --
ok=""; okbytes=0; i=0; kind=""; ref=""; digest=""; tag=""; kindj=""; refj=""; digestj=""
while [ "$i" -lt "$n" ]; do
  eval "kind=\$kind_$i ref=\$ref_$i digest=\$digest_$i tag=\$tag_$i kindj=\$kindj_$i refj=\$refj_$i digestj=\$digestj_$i"
  hex=${digest#sha256:}
  stage="$cache/.staging-$hex"
  rm -rf "$stage"
  err=""; bytes=0
  # bounded like the whole script (exec_timeout): a hung pull must not hold writer.lock for ever.
  # 8>&-: busybox timeout leaves its watcher process behind for up to a second after skopeo ended,
  # with the fds it inherited; with writer.lock among them the next step found the lock held.
  auth=""; [ -n "$authfile" ] && auth=--src-authfile=$authfile
  if out=$(${tmo:+timeout -k 10 "$tmo"} skopeo ${pol:+"$pol"} copy --quiet --preserve-digests ${tls:+"$tls"} ${auth:+"$auth"} "docker://$ref" "oci:$stage:$tag" 2>&1 </dev/null 8>&-); then
    # (in this shell: vl_err and vl_size are its variables)
    if osfleet_check_layout "$stage" "$digest"; then
      m="$stage/blobs/sha256/$hex"
      # shellcheck disable=SC2154,SC2004  # vl_size: osfleet_check_layout's, expanded as its text (as jq printed it)
      bytes=$(( $vl_size + $(wc -c < "$m") ))
      # as jq -n prints {kind, ref, digest, bytes, fetched_at}
      printf '{\n  "kind": %s,\n  "ref": %s,\n  "digest": %s,\n  "bytes": %s,\n  "fetched_at": "%s"\n}\n' \
        "$kindj" "$refj" "$digestj" "$bytes" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$stage/osfleet-fetch.json" \
        || err="cannot write $stage/osfleet-fetch.json"
    else
      # shellcheck disable=SC2154  # vl_err: osfleet_check_layout's
      err=$vl_err
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
  set -- "$@" --arg "kind_$i" "$kind" --arg "ref_$i" "$ref" --arg "error_$i" "$err" --argjson "bytes_$i" "$bytes"
  i=$((i + 1))
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
# shellcheck disable=SC2016  # jq's variables
jq -n "$@" --argjson tried "$i" --arg ok "$ok" --argjson bytes "$okbytes" \
  '$ARGS.named as $a | {attempts: [range($tried) | tostring as $i
     | {kind: $a["kind_" + $i], ref: $a["ref_" + $i], ok: ($a["error_" + $i] == ""), error: $a["error_" + $i], bytes: $a["bytes_" + $i]}],
   fetched: $ok, bytes: $bytes}'
