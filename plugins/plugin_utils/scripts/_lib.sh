#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The functions the device scripts share (see plugin_utils/shell.py). The loader puts the preamble
# (the code above the first function) in front of every script, then each function below that the
# script, or a function it includes, names. A function starts with a line "name() {" and ends with
# a line "}", both at the start of the line.

set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
# Every script of an update run (OSFLEET_RUN_ID, set by plugin_utils/action.py) tells the run's
# device-side watchdog (scripts/watchdog.sh) that the controller is there: a shared flock on busy
# while it runs (children inherit it), and the device's uptime in heartbeat. Once the watchdog
# gave the run up, the run's scripts refuse to run (the lock step resumes the run). It runs before
# every script, so it reads with the shell's read (a one-line file; no cat, no cut).
osfleet_wd_run=""
if [ -n "${OSFLEET_RUN_ID:-}" ]; then { IFS= read -r osfleet_wd_run < /run/osfleet/watchdog/run; } 2>/dev/null || true; fi
if [ -n "${OSFLEET_RUN_ID:-}" ] && [ "$osfleet_wd_run" = "$OSFLEET_RUN_ID" ]; then
  exec 7>>/run/osfleet/watchdog/busy && flock -s -w 30 7
  if [ -f /run/osfleet/watchdog/fired ]; then
    printf '%s\n' "the device's watchdog gave this run up ($(cat /run/osfleet/watchdog/fired)); run again with the same run id (hup_run_id=$OSFLEET_RUN_ID) to resume" >&2
    exit 75  # plugin_utils/action.py WATCHDOG_GAVE_UP_EXIT
  fi
  osfleet_uptime=""
  { read -r osfleet_uptime _ < /proc/uptime; } 2>/dev/null || true
  printf '%s\n' "$osfleet_uptime" > /run/osfleet/watchdog/heartbeat
fi

fail() {
  printf '%s\n' "$*" >&2
  exit 1
}

# the content of a file, nothing when it does not exist; at most one byte more than the controller
# accepts (plugin_utils/device.py FILE_LIMIT), so that a larger file shows there and is refused
osfleet_read() {
  if [ -f "$1" ]; then head -c 65537 "$1"; fi
}

# The content of the file $2 of the root $1 (a mounted root that is not the running one), its
# links resolved inside $1 (osfleet_in_root); nothing when there is no such file. Never a file of
# the running system.
osfleet_read_in() {
  ri_p=$(osfleet_in_root "$1" "$2") || return 0
  if [ -f "$ri_p" ]; then cat "$ri_p"; fi
}

# Log in to the registries of the credentials $1 (JSON {username, password, registries}: the
# script's standard input, so that the password never reaches a command line; it goes to the tool's
# standard input) with $2: "skopeo" (skopeo login: the auth file $3/auth.json, for --src-authfile)
# or "balena" (balena login --password-stdin: $3/config.json, for DOCKER_CONFIG=$3). $3 must be
# a private directory (osfleet_auth_dir). $4: the registries' scheme, http (plain HTTP, no TLS
# verification) or https. A login that fails fails naming the registry, the HTTP status of its /v2/
# with these credentials and the tool's reason.
osfleet_registry_login() {
  rl_user=$(printf '%s' "$1" | jq -er '.username') || fail "the registry credentials have no username"
  rl_n=$(printf '%s' "$1" | jq -r '.registries | length') || fail "the registry credentials name no registries"
  rl_tls=""; [ "$4" = http ] && rl_tls=--tls-verify=false
  rl_i=0
  while [ "$rl_i" -lt "$rl_n" ]; do
    rl_reg=$(printf '%s' "$1" | jq -r --argjson i "$rl_i" '.registries[$i]')
    rl_i=$((rl_i + 1))
    if [ "$2" = balena ]; then
      rl_err=$(printf '%s' "$1" | jq -r '.password' | DOCKER_CONFIG=$3 balena login -u "$rl_user" --password-stdin "$rl_reg" 2>&1 >/dev/null) \
        && continue
    else
      rl_err=$(printf '%s' "$1" | jq -r '.password' \
        | skopeo --command-timeout=60s login ${rl_tls:+"$rl_tls"} --authfile "$3/auth.json" -u "$rl_user" --password-stdin "$rl_reg" 2>&1 >/dev/null) \
        && continue
    fi
    rl_err=$(printf '%s\n' "$rl_err" | grep -v '^[[:space:]]*$' | tail -n 1 | sed 's/^time="[^"]*" level=[a-z]* msg="\(.*\)"$/\1/')
    # the status of /v2/ with these credentials (Basic), curl's config on its standard input
    rl_code=$(printf '%s' "$1" | jq -r '"header = \"Authorization: Basic \("\(.username):\(.password)" | @base64)\""' \
      | curl -s -K - -o /dev/null -m 10 -w '%{http_code}' "$4://$rl_reg/v2/" 2>/dev/null) || rl_code=000
    fail "login to the registry $rl_reg as $rl_user failed (HTTP $rl_code from $4://$rl_reg/v2/): ${rl_err:-no reason given}; nothing was changed"
  done
}

# A private directory (mode 0700) for registry credentials, under the run dir (/run/osfleet, a
# tmpfs: a power cut leaves nothing); prints its path. The caller removes it (an EXIT trap).
osfleet_auth_dir() {
  ad_run=${OSFLEET_RUN_DIR:-/run/osfleet}
  mkdir -p "$ad_run" || fail "cannot create $ad_run"
  ad_dir=$ad_run/auth.$$
  rm -rf "$ad_dir"
  (umask 077 && mkdir "$ad_dir") || fail "cannot create a private directory for the registry credentials in $ad_run"
  printf '%s\n' "$ad_dir"
}

# One fetch or root write at a time on a device: the script of a killed run goes on running on the
# device (no tty, so no hangup), and a second writer must not race it: a writer that runs is refused
# at once, naming the process that holds the lock.
osfleet_writer_lock() {
  osfleet_writer_lock_within 0
}

# The writer lock, waiting up to $1 seconds for it.
osfleet_writer_lock_within() {
  rundir=${OSFLEET_RUN_DIR:-/run/osfleet}
  mkdir -p "$rundir" || fail "cannot create $rundir"
  exec 8>"$rundir/writer.lock" || fail "cannot open $rundir/writer.lock"
  wl_left=$1
  until flock -n 8; do
    if [ "$wl_left" -le 0 ]; then
      fail "another fetch or root write is still running on the device (an interrupted run?$(osfleet_lock_holder "$rundir/writer.lock" 8>&-)); run again when it has ended"
    fi
    sleep 1; wl_left=$((wl_left - 1))
  done
}

# ": held by pid N (its command line) and K more (pids ...)" for the processes other than the
# caller that have the lock file $1 open (/proc/<pid>/fd; /proc/locks does not show locks across PID
# namespaces); nothing when there is none. One short line: a device script is "sh -c '<text>'", so
# a command line spans lines, and an orphaned write holds the lock in its children too. Called in a
# command substitution, its fd of the lock closed: the caller is the parent of the subshell ($$ may
# name a shell the caller forked from), and the subshell (bash keeps a copy of a redirected fd while
# the function runs) is left out too
osfleet_lock_holder() {
  lh_first=""; lh_more=""; lh_n=0
  read -r lh_self _ _ lh_me _ < /proc/self/stat || { lh_self=""; lh_me=""; }
  for lh_p in /proc/[0-9]*; do
    lh_pid=${lh_p#/proc/}
    case $lh_pid in "$lh_me" | "$lh_self") continue ;; esac
    for lh_fd in "$lh_p"/fd/*; do
      if [ "$(readlink "$lh_fd" 2>/dev/null)" = "$1" ]; then
        if [ -z "$lh_first" ]; then
          lh_cmd=$(tr '\0\n\t' '   ' < "$lh_p/cmdline" 2>/dev/null | head -c 120)
          lh_first="pid $lh_pid (${lh_cmd% })"
        else
          lh_n=$((lh_n + 1)); lh_more="$lh_more $lh_pid"
        fi
        break
      fi
    done
  done
  [ -n "$lh_first" ] || return 0
  printf ': held by %s' "$lh_first"
  [ "$lh_n" -eq 0 ] || printf ' and %s more (pids%s)' "$lh_n" "$lh_more"
}

# The device node of the inactive root partition that a writer may write: $1 (its label) must
# resolve to $2 (the device the probe saw), a block device that is neither the device of / nor the
# partition mounted at /mnt/sysroot/active (the running root), nor the root the bootloader env names
# as the root to boot, armed or not (the rootfs step points the env at the running root first):
# u-boot resinOS_uEnv.txt (a hex index) or a grubenv (decimal), against the partition number the
# kernel gives the device. $3 says what the writer does ("format", "write"; "stamp" skips the env
# check: hostapp-update's hooks armed the env for the partition it wrote). Sets dev and actdev
# (the device at /mnt/sysroot/active, or nothing); fails (the script ends) otherwise.
osfleet_writable_root() {
  wr_label=$1; wr_want=$2; wr_verb=$3
  dev=$(readlink -f "/dev/disk/by-partlabel/$wr_label" 2>/dev/null) || fail "$wr_label: no /dev/disk/by-partlabel/$wr_label"
  [ -b "$dev" ] || fail "$wr_label resolves to $dev, which is not a block device"
  [ "$dev" = "$wr_want" ] || fail "$wr_label resolves to $dev now, the probe saw $wr_want"
  rootdev=$(readlink -f "$(osfleet_mounted_dev /)")
  [ "$dev" != "$rootdev" ] || fail "refusing to $wr_verb $wr_label ($dev): it is the device of / (the running root)"
  actdev=$(osfleet_mounted_dev /mnt/sysroot/active); [ -z "$actdev" ] || actdev=$(readlink -f "$actdev")
  [ "$dev" != "$actdev" ] || fail "refusing to $wr_verb $wr_label ($dev): it is mounted at /mnt/sysroot/active"
  idx=$(cat "/sys/class/block/${dev##*/}/partition" 2>/dev/null) || idx=""
  case $idx in ''|*[!0-9]*) fail "cannot tell the partition number of $dev (/sys/class/block/${dev##*/}/partition)";; esac
  # a stamp goes onto a hostapp that the new OS's hooks armed already
  [ "$wr_verb" != stamp ] || return 0
  envpart=""
  if [ -f /mnt/boot/resinOS_uEnv.txt ]; then
    v=$(sed -n 's/^[[:space:]]*resin_root_part=//p' /mnt/boot/resinOS_uEnv.txt | tail -n 1 | tr -d '[:space:]')
    case $v in ''|*[!0-9a-fA-F]*) fail "cannot read resin_root_part in /mnt/boot/resinOS_uEnv.txt (${v:-missing})";; esac
    envpart=$((0x$v))
  else
    for g in /mnt/boot/grub/grubenv /mnt/boot/EFI/BOOT/grubenv; do
      [ -f "$g" ] || continue
      v=$(tr -d '\000' < "$g" | sed -n 's/^resin_root_part=//p' | tail -n 1 | tr -d '[:space:]')
      case $v in ''|*[!0-9]*) fail "cannot read resin_root_part in $g (${v:-missing})";; esac
      v=${v#"${v%%[!0]*}"}; envpart=$((${v:-0}))
      break
    done
  fi
  [ -n "$envpart" ] || fail "no bootloader env on /mnt/boot (resinOS_uEnv.txt or a grubenv): cannot tell which root boots next"
  [ "$envpart" != "$idx" ] || fail "refusing to $wr_verb $wr_label ($dev): the bootloader env names it (partition $idx) as the root to boot; point the env at the running root first"
}

# the device mounted at $1 (the last mount there), nothing when none
osfleet_mounted_dev() {
  awk -v m="$1" '$2==m {d=$1} END {print d}' /proc/mounts
}

# Verify the OCI layout $1 against the catalog digest $2: index.json names exactly that manifest,
# every blob's sha256 equals its name, every blob the manifest names is present. Prints why not.
osfleet_verify_layout() {
  osfleet_check_layout "$1" "$2" || { printf '%s\n' "$vl_err"; return 1; }
}

# osfleet_verify_layout in this shell's variables (no subshell): vl_err, why the layout is refused
# ("" when it is not); vl_size, the sum of the sizes the manifest gives its config and layers (as
# jq prints it). index.json and the manifest are read by one jq (a jq start costs ~25 ms of a
# device's CPU), before the blobs are hashed; what it read of the manifest counts only once the
# manifest's own sha256 has been checked.
osfleet_check_layout() {
  l=$1; want=$2; vl_err=""; got=""; vl_digests=""
  # shellcheck disable=SC2034  # the caller's
  vl_size=null
  [ -f "$l/index.json" ] || { vl_err="no index.json in the layout"; return 1; }
  m="$l/blobs/sha256/${want#sha256:}"
  if [ -f "$m" ]; then set -- --rawfile man "$m"; else set --; fi
  # got: each value of index.json read as jq -r '[.manifests[]?.digest] | ...' prints it, a line each
  # shellcheck disable=SC2016  # jq's variables
  vl_sh=$(jq -rn --slurpfile idx "$l/index.json" "$@" '
    def text: if type == "string" then . else tojson end;
    "got=\([$idx[] | [.manifests[]?.digest] | if length == 1 then .[0] else "\(length) manifests" end | text] | join("\n") | @sh)",
    "vl_digests=\([$ARGS.named.man // empty | try fromjson catch empty | try (.config.digest, .layers[].digest) catch empty | text]
      | join("\n") | @sh)",
    "vl_size=\([$ARGS.named.man // empty | try fromjson catch empty | try ([.config.size, .layers[].size] | add) catch null][0] | tojson | @sh)"
    ' 2>/dev/null) || { vl_err="index.json is not valid JSON"; return 1; }
  eval "$vl_sh"
  [ "$got" = "$want" ] || { vl_err="digest mismatch: the image's manifest is $got, the catalog says $want"; return 1; }
  for b in "$l"/blobs/sha256/*; do
    [ -f "$b" ] || continue
    h=$(sha256sum "$b" | cut -d' ' -f1)
    [ "$h" = "${b##*/}" ] || { vl_err="blob ${b##*/} is corrupt (its sha256 is $h)"; return 1; }
  done
  [ -f "$m" ] || { vl_err="the manifest blob $want is missing"; return 1; }
  for d in $vl_digests; do
    [ -f "$l/blobs/sha256/${d#sha256:}" ] || { vl_err="blob $d is missing"; return 1; }
  done
}

# Is the existing directory $1 a mount point (after resolving symlinks)? The image cache must not be
# one: it is a directory of its own (plugin_utils/cache.py).
osfleet_mount_point() {
  r=$(readlink -f "$1" 2>/dev/null) || return 1
  awk -v m="$r" '$2 == m {found = 1} END {exit !found}' /proc/mounts
}

# The path $2 inside the root $1 (an absolute $2 starts at $1 too), every symlink on the way
# resolved as if $1 were / (an absolute target starts again at $1); prints $1/<path without a
# symlink in it>. With $3 = parent the last component is appended as it is, not resolved. Fails,
# printing the reason, when a ".." climbs above $1 or the links nest more than 40 deep: nothing
# under $1 can name a file of the running system.
osfleet_in_root() {
  ir_root=${1%/}; ir_rest=$2; ir_done=""; ir_n=0; ir_last=""
  if [ "${3:-}" = parent ]; then
    while :; do case $ir_rest in */) ir_rest=${ir_rest%/} ;; *) break ;; esac; done
    case $ir_rest in */*) ir_last=${ir_rest##*/}; ir_rest=${ir_rest%/*} ;; *) ir_last=$ir_rest; ir_rest="" ;; esac
    case $ir_last in ''|.|..) echo "$2: no file name at its end"; return 1 ;; esac
  fi
  while [ -n "$ir_rest" ]; do
    case $ir_rest in */*) ir_c=${ir_rest%%/*}; ir_rest=${ir_rest#*/} ;; *) ir_c=$ir_rest; ir_rest="" ;; esac
    case $ir_c in
      ''|.) continue ;;
      ..) [ -n "$ir_done" ] || { echo "$2 leaves $ir_root (a \"..\" above its top)"; return 1; }
          case $ir_done in */*) ir_done=${ir_done%/*} ;; *) ir_done="" ;; esac
          continue ;;
    esac
    ir_p=$ir_root/${ir_done:+$ir_done/}$ir_c
    if [ -L "$ir_p" ]; then
      ir_n=$((ir_n + 1))
      [ "$ir_n" -le 40 ] || { echo "$2: too many levels of symbolic links in $ir_root"; return 1; }
      ir_t=$(readlink "$ir_p") || { echo "cannot read the symbolic link $ir_p"; return 1; }
      case $ir_t in /*) ir_done="" ;; esac
      ir_rest=$ir_t${ir_rest:+/$ir_rest}
    else
      ir_done=${ir_done:+$ir_done/}$ir_c
    fi
  done
  printf '%s\n' "$ir_root${ir_done:+/$ir_done}${ir_last:+/$ir_last}"
}

# Whether the root partition mounted at $1 holds a hostapp (hostapp-facts §1: a balena/ data root
# and a `current` symlink), in this shell's variables: ho_t, the target of $1/current; ho_f, the
# config.v2.json of the container it names ("" when the link names no container id, or the config
# is missing or reached through a link). Returns 1 when $1 holds no hostapp. Read as plain files of
# $1, never through a link.
osfleet_hostapp_config() {
  ho_t=""; ho_f=""
  [ -d "$1/balena" ] && [ ! -L "$1/balena" ] && [ -L "$1/current" ] || return 1
  ho_t=$(readlink "$1/current") || { ho_t=""; return 1; }
  ho_c=${ho_t##*/}
  case $ho_c in
    ''|*[!0-9a-f]*) ;;
    *) ho_f="$1/balena/containers/$ho_c/config.v2.json"
       if [ ! -f "$ho_f" ] || [ -L "$ho_f" ] || [ -L "$1/balena/containers" ] || [ -L "$1/balena/containers/$ho_c" ]; then ho_f=""; fi ;;
  esac
  return 0
}

# The hostapp of the root partition mounted at $1 (osfleet_hostapp_config): "<target of $1/current>
# <the Image of that container's config.v2.json>" ("-" when the config is missing or unreadable);
# nothing when $1 holds no hostapp. (The device probe reads the Image in its own jq, scripts/probe.sh.)
osfleet_hostapp_of() {
  osfleet_hostapp_config "$1" || return 0
  ho_i=-
  if [ -n "$ho_f" ]; then ho_i=$(head -c 1048576 "$ho_f" | jq -r '.Image // "-"' 2>/dev/null) || ho_i=-; fi
  printf '%s %s' "$ho_t" "${ho_i:--}"
}

# Wait up to $1 seconds for the detached hostapp-update of scripts/hostapp_write.sh
# (/run/osfleet/hostapp-update) and print where it stands, as one JSON object: state "running",
# "done" (status: its exit status) or "gone" (no status and no process: killed, or never started
# since this boot), how ($2: started, attached, waited), the image and flag, its uptime when it
# started and the last 40 lines of its output.
osfleet_hostapp_wait() {
  osfleet_hostapp_job "$1"
  jq -n --arg state "$hw_state" --arg how "$2" --arg status "$hw_status" --arg image "$hw_image" --arg flag "$hw_flag" \
    --arg started "$hw_started" --arg log "$hw_log" "$hw_filter"
}

# osfleet_hostapp_wait's wait, in this shell's variables: hw_job, the job's directory; hw_state,
# where the job stands (running, done, gone); hw_status, hw_image, hw_flag, hw_started, hw_log,
# what the job's files say; hw_filter, the jq filter of the object osfleet_hostapp_wait prints,
# from jq variables named as the fields (the device probe builds it in its own jq: a jq start
# costs ~25 ms of a device's CPU). The registry credentials of a job that ended are removed.
osfleet_hostapp_job() {
  # shellcheck disable=SC2016  # jq's variables
  hw_filter='{state: $state, how: $how, status: (if $status == "" then null else ($status | tonumber? // null) end), image: $image, flag: $flag,
      started: $started, log: $log}'
  hw_job=/run/osfleet/hostapp-update; hw_left=$1; hw_state=gone
  while :; do
    if [ -f "$hw_job/status" ]; then hw_state="done"; break; fi
    hw_pid=$(cat "$hw_job/pid" 2>/dev/null) || hw_pid=""
    if [ -z "$hw_pid" ] || ! kill -0 "$hw_pid" 2>/dev/null; then
      # the job may have written its status between the two looks
      if [ -f "$hw_job/status" ]; then hw_state="done"; else hw_state=gone; fi
      break
    fi
    hw_state=running
    [ "$hw_left" -gt 0 ] || break
    sleep 1; hw_left=$((hw_left - 1))
  done
  # the registry credentials of a job that ended (the job removes them itself; not when it was killed)
  [ "$hw_state" = running ] || rm -rf "$hw_job/auth"
  hw_status=$(cat "$hw_job/status" 2>/dev/null); hw_image=$(head -n 1 "$hw_job/image" 2>/dev/null)
  hw_flag=$(head -n 1 "$hw_job/flag" 2>/dev/null); hw_started=$(cat "$hw_job/started" 2>/dev/null)
  hw_log=$(tail -n 40 "$hw_job/log" 2>/dev/null | head -c 8000)
}

# Check the docker-archive $1 (docker save's format, the hostapp writer's push transport) against
# the image id $2 (sha256:<hex>) before anything loads it, as plugin_utils/archive.py does on the
# controller: manifest.json describes exactly one image, its config member hashes to the image id,
# and each layer member, in manifest order, to the config's diff_id at its position. Returns 1 and
# prints the reason. tar -xOf and sha256sum as busybox has them; member names are checked first.
osfleet_archive_check() {
  ac_file=$1 ac_id=$2
  if [ ! -f "$ac_file" ]; then printf '%s\n' "it is not on the device"; return 1; fi
  ac_man=$(tar -xOf "$ac_file" manifest.json 2>/dev/null) || ac_man=""
  ac_cfg_name=$(printf '%s' "$ac_man" | jq -r 'if type == "array" and length == 1 and (.[0].Config | type) == "string"
      and (.[0].Layers | type) == "array" then .[0].Config else empty end' 2>/dev/null) || ac_cfg_name=""
  if [ -z "$ac_cfg_name" ]; then printf '%s\n' "its manifest.json does not describe exactly one image"; return 1; fi
  ac_bad=$(printf '%s' "$ac_man" | jq -r '[.[0].Config, .[0].Layers[]] | map(select((type != "string") or (test("^[A-Za-z0-9][A-Za-z0-9._/-]*$") | not)
      or (split("/") | index("..") != null))) | .[0] // empty')
  if [ -n "$ac_bad" ]; then printf '%s\n' "its manifest.json names the member $ac_bad"; return 1; fi
  ac_found=$(tar -xOf "$ac_file" "$ac_cfg_name" 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [ "sha256:$ac_found" != "$ac_id" ]; then printf '%s\n' "its config is image sha256:$ac_found, not $ac_id"; return 1; fi
  ac_pairs=$(tar -xOf "$ac_file" "$ac_cfg_name" | jq -r --argjson m "$ac_man" '(.rootfs.diff_ids // []) as $d | $m[0].Layers as $l
      | if ($d | length) != ($l | length) then "count \($d | length) \($l | length)" else range(0; $l | length) | "\($l[.]) \($d[.])" end') \
    || { printf '%s\n' "its config has no rootfs.diff_ids"; return 1; }
  case $ac_pairs in count\ *) printf '%s\n' "its config and its manifest.json name different numbers of layers (${ac_pairs#count })"; return 1 ;; esac
  ac_n=0
  while read -r ac_layer ac_diff; do
    [ -n "$ac_layer" ] || continue
    ac_n=$((ac_n + 1))
    ac_found=$(tar -xOf "$ac_file" "$ac_layer" 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ "sha256:$ac_found" != "$ac_diff" ]; then printf '%s\n' "its layer $ac_n ($ac_layer) is sha256:$ac_found, not the config's diff_id $ac_diff"; return 1; fi
  done <<EOF_PAIRS
$ac_pairs
EOF_PAIRS
  return 0
}

# The member names of the layer blob $1 (tar option $2: -z or nothing), one per line, as they are:
# GNU tar escapes non-ASCII characters and backslashes in -t output unless told not to, busybox
# tar prints them raw.
osfleet_tar_names() {
  if tar --version 2>/dev/null | head -n 1 | grep -q 'GNU tar'; then
    tar ${2:+"$2"} --quoting-style=literal -tf "$1"
  else
    tar ${2:+"$2"} -tf "$1"
  fi
}

# Apply one layer blob ($1, media type $2) onto the root directory $3 (a canonical path) like the
# engine's layer store does, without ever leaving $3:
# 1. the whiteouts (.wh.NAME, .wh..wh..opq) remove what the lower layers put there, their
#    directories resolved inside $3 (osfleet_in_root);
# 1b. a directory entry of the layer (a name ending in /) replaces what is there and is not a
#    directory (a link, even one inside $3, or a file), as the engines' layer stores do;
# 2. every symlink already in $3 whose target leaves it as the kernel follows it (an absolute
#    target, or a ".." above the top, seen from the running system) is moved aside while tar
#    extracts, so no member is written through it; tar itself (GNU: placeholders, busybox:
#    refusal) never follows such a link of the layer it is extracting;
# 3. each link moved aside goes back, unless the layer put an entry of that name there (it
#    replaced the link); a layer that wrote below such a link without replacing it is refused;
# 4. the whiteout entries themselves are removed (they are markers, not files of the root).
# Member names with a line break are refused, and so is a layer that carries the release stamp
# (.osfleet-release.json, anywhere: a link inside the root could take it to the top), before
# anything of it is written.
osfleet_apply_layer() {
  al_blob=$1; al_mt=$2; al_root=$3; al_id=${1##*/}
  case $al_mt in
    *tar+gzip|*tar.gzip) al_z=-z ;;
    *.tar|*tar) al_z= ;;
    *) echo "unsupported layer media type $al_mt"; return 1 ;;
  esac
  al_nl='
'
  al_names=$(osfleet_tar_names "$al_blob" "$al_z") || { echo "cannot read layer $al_id"; return 1; }
  al_wh=""; al_dirs=""
  while IFS= read -r al_p; do
    al_p=${al_p#./}
    case $al_p in
      */) while :; do case $al_p in */) al_p=${al_p%/} ;; *) break ;; esac; done
          [ -z "$al_p" ] || al_dirs="$al_dirs$al_p
"
          continue ;;
    esac
    al_base=${al_p##*/}
    case $al_base in
      .osfleet-release.json|.osfleet-release.json.tmp)
        echo "layer $al_id carries $al_p: the release stamp is written by osfleet.hup after its checks, never taken from an image"
        return 1 ;;
      .wh.*) ;;
      *) continue ;;
    esac
    case "/$al_p/" in */../*) echo "layer $al_id: refusing whiteout path $al_p"; return 1 ;; esac
    al_dir=""; case $al_p in */*) al_dir=${al_p%/*} ;; esac
    al_wh="$al_wh$al_p
"
    al_d=$(osfleet_in_root "$al_root" "$al_dir") || { echo "layer $al_id: whiteout $al_p: $al_d"; return 1; }
    [ -d "$al_d" ] || continue
    if [ "$al_base" = ".wh..wh..opq" ]; then
      find "$al_d" -mindepth 1 -maxdepth 1 -exec rm -rf {} + || { echo "layer $al_id: cannot clear $al_d"; return 1; }
    else
      rm -rf "${al_d:?}/${al_base#.wh.}" || { echo "layer $al_id: cannot remove ${al_dir:+$al_dir/}${al_base#.wh.}"; return 1; }
    fi
  done <<EOF_LIST
$al_names
EOF_LIST
  # a directory of the layer replaces what is there and is not a directory (a link, a file), as the
  # engines' layer stores do (OCI changesets); tar would keep a link to a directory and write below it
  while IFS= read -r al_p; do
    [ -n "$al_p" ] || continue
    case "/$al_p/" in */../*) echo "layer $al_id: refusing directory path $al_p"; return 1 ;; esac
    al_d=$(osfleet_in_root "$al_root" "$al_p" parent) || { echo "layer $al_id: directory $al_p: $al_d"; return 1; }
    if [ -L "$al_d" ] || { [ -e "$al_d" ] && [ ! -d "$al_d" ]; }; then
      rm -f "$al_d" || { echo "layer $al_id: cannot replace $al_p by the layer's directory"; return 1; }
    fi
  done <<EOF_DIRS
$al_dirs
EOF_DIRS
  al_hold=$(mktemp -d "$al_root/.osfleet-held.XXXXXX") || { echo "cannot create a directory in $al_root"; return 1; }
  al_held=""; al_i=0
  al_links=$(cd "$al_root" && find . -xdev -type l ! -path "./${al_hold##*/}/*") || { echo "cannot list the links in $al_root"; return 1; }
  while IFS= read -r al_l; do
    [ -n "$al_l" ] || continue
    al_l=${al_l#./}
    al_in=$(osfleet_in_root "$al_root" "$al_l" 2>/dev/null) || al_in=""
    al_k=$(readlink -f "$al_root/$al_l" 2>/dev/null) || al_k=""
    # the kernel lands where the root's own reading does, or on a file (nothing can go below it)
    if [ -n "$al_in" ] && [ "$al_in" = "$al_k" ]; then continue; fi
    if [ -n "$al_k" ] && [ -e "$al_k" ] && [ ! -d "$al_k" ]; then continue; fi
    al_i=$((al_i + 1))
    mv "$al_root/$al_l" "$al_hold/$al_i" || { echo "cannot move the link $al_l aside"; rm -rf "$al_hold"; return 1; }
    al_held="$al_held$al_i $al_l
"
  done <<EOF_LINKS
$al_links
EOF_LINKS
  al_err=""
  tar ${al_z:+"$al_z"} -xf "$al_blob" -C "$al_root" --numeric-owner || al_err="cannot extract layer $al_id"
  al_names_n=$(printf '%s\n' "$al_names" | sed -e 's|^\./||' -e 's|/*$||')
  while IFS=' ' read -r al_i al_l; do
    [ -n "$al_i" ] || continue
    if [ -e "$al_root/$al_l" ] || [ -L "$al_root/$al_l" ]; then
      if ! printf '%s\n' "$al_names_n" | grep -Fxq -- "$al_l"; then
        [ -n "$al_err" ] || al_err="layer $al_id writes below $al_l, a symbolic link to $(readlink "$al_hold/$al_i") that leaves the root"
      fi
    elif [ -z "$al_err" ]; then
      mv "$al_hold/$al_i" "$al_root/$al_l" 2>/dev/null || true
    fi
  done <<EOF_HELD
$al_held
EOF_HELD
  rm -rf "$al_hold"
  [ -z "$al_err" ] || { echo "$al_err"; return 1; }
  if [ -n "$(find "$al_root" -xdev -name "*$al_nl*" 2>/dev/null | head -n 1)" ]; then
    echo "layer $al_id: refusing a file name with a line break"; return 1
  fi
  # the whiteout entries themselves are markers, not files of the root
  while IFS= read -r al_p; do
    [ -n "$al_p" ] || continue
    al_d=$(osfleet_in_root "$al_root" "$al_p" parent) && rm -rf "$al_d"
  done <<EOF_WH
$al_wh
EOF_WH
  return 0
}

# Apply the layers of the image $2 (manifest digest) in the layout $1 onto the root $3; prints
# how many layers it applied.
osfleet_apply_image() {
  ai_m="$1/blobs/sha256/${2#sha256:}"
  ai_root=$(readlink -f "$3") || ai_root=""
  if [ -z "$ai_root" ] || [ ! -d "$ai_root" ]; then echo "$3 is not a directory"; return 1; fi
  ai_layers=$(jq -r '.layers[] | .digest + " " + .mediaType' "$ai_m") || { echo "cannot read the manifest $2"; return 1; }
  ai_n=0
  while read -r ai_d ai_mt; do
    [ -n "$ai_d" ] || continue
    osfleet_apply_layer "$1/blobs/sha256/${ai_d#sha256:}" "$ai_mt" "$ai_root" || return 1
    ai_n=$((ai_n + 1))
  done <<EOF_LAYERS
$ai_layers
EOF_LAYERS
  echo "$ai_n"
}

# The file $2 of the root $1 (osfleet_in_root), when it is a regular file there: cat-able, never a
# file of the running system. Prints the path; fails (printing why) otherwise.
osfleet_root_file() {
  rf_p=$(osfleet_in_root "$1" "$2") || { echo "$rf_p"; return 1; }
  [ -f "$rf_p" ] || { echo "${2#/} is not a file in $1"; return 1; }
  printf '%s\n' "$rf_p"
}

# sha256sum -c of the release's own list in the root $1, every listed path resolved inside $1
# (an absolute symlink of the written root must not check a file of the running system); prints
# the mismatches
osfleet_check_root() {
  cr_root=$(readlink -f "$1") || { echo "$1 does not exist"; return 1; }
  cr_list=$(osfleet_root_file "$cr_root" usr/share/osfleet/rootfs.sha256) \
    || { echo "the written root has no usr/share/osfleet/rootfs.sha256"; return 1; }
  cr_sums=""; cr_bad=""
  while IFS= read -r cr_line; do
    [ -n "$cr_line" ] || continue
    cr_sum=${cr_line%%  *}; cr_name=${cr_line#*  }
    if [ "$cr_sum" = "$cr_line" ] || ! cr_p=$(osfleet_in_root "$cr_root" "$cr_name"); then
      cr_bad="$cr_bad${cr_name:-?}: outside the root
"
      continue
    fi
    cr_sums="$cr_sums$cr_sum  ./${cr_p#"$cr_root"/}
"
  done < "$cr_list"
  cr_out=$(cd "$cr_root" && printf '%s' "$cr_sums" | sha256sum -c 2>/dev/null) && [ -z "$cr_bad" ] && return 0
  cr_out="$cr_bad$(printf '%s\n' "$cr_out" | grep -v ': OK$')"
  cr_n=$(printf '%s\n' "$cr_out" | grep -c .)
  echo "the written root does not match the release: $cr_n files differ ($(printf '%s\n' "$cr_out" | head -n 3 | tr '\n' ' '))"
  return 1
}

# The canonical listing of the root $1 (docs/internals.md §3, a release's root_listing) into the
# file $2: one line per entry below $1, except the entries lost+found (mkfs makes it) and
# .osfleet-release.json (the stamp) at its top,
#   <path> TAB <type d|f|l|c|b|p|s> TAB <mode, octal> TAB <uid>:<gid> TAB <size (f, l) | -> TAB
#   <sha256 (f) | link target (l) | major,minor in hex (c, b) | ->
# the path relative to $1 (no ./), a backslash in the path or the link target written \\, a tab
# \t; the lines sorted bytewise (LC_ALL=C sort). Fails, printing why, on a link target with a line
# break (a name with one is refused while the layers are applied).
osfleet_root_listing() {
  rl_root=$1; rl_out=$2; rl_nl='
'
  rl_tmp=$(mktemp -d "${TMPDIR:-/tmp}/osfleet-listing.XXXXXX") || { echo "cannot create a temporary directory"; return 1; }
  rl_err=""
  (cd "$rl_root" && find . -xdev -mindepth 1 ! -path ./lost+found ! -path ./.osfleet-release.json \
    -exec stat -c '%f %a %u:%g %s %t,%T %n' {} +) > "$rl_tmp/stat" || rl_err="cannot stat the entries of $rl_root"
  [ -n "$rl_err" ] || (cd "$rl_root" && find . -xdev -type f ! -path ./.osfleet-release.json -exec sha256sum {} +) > "$rl_tmp/sums" \
    || rl_err="cannot read the files of $rl_root"
  [ -n "$rl_err" ] || (cd "$rl_root" && find . -xdev -type l) > "$rl_tmp/links" || rl_err="cannot list the links of $rl_root"
  if [ -z "$rl_err" ]; then
    # every link's path and target on two lines
    while IFS= read -r rl_l; do
      rl_t=$(readlink "$rl_root/${rl_l#./}" && echo x) || { rl_err="cannot read the link $rl_l"; break; }
      rl_t=${rl_t%x}; rl_t=${rl_t%"$rl_nl"}
      case $rl_t in *"$rl_nl"*) rl_err="the link $rl_l has a line break in its target"; break ;; esac
      printf '%s\n%s\n' "$rl_l" "$rl_t"
    done < "$rl_tmp/links" > "$rl_tmp/targets"
  fi
  [ -n "$rl_err" ] || LC_ALL=C awk '
    function esc(s,   o, c, i) {
      if (s !~ /[\\\t]/) return s
      o = ""
      for (i = 1; i <= length(s); i++) { c = substr(s, i, 1); o = o (c == "\\" ? "\\\\" : (c == "\t" ? "\\t" : c)) }
      return o
    }
    function unesc(s,   o, c, i) {
      o = ""
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\\" && i < length(s)) { i++; c = substr(s, i, 1); if (c == "n") c = "\n"; else if (c == "r") c = "\r" }
        o = o c
      }
      return o
    }
    function rel(p) { sub(/^\.\//, "", p); return p }
    part == "sums" {
      l = $0; u = substr(l, 1, 1) == "\\"; if (u) l = substr(l, 2)
      p = substr(l, 67); if (u) p = unesc(p)
      hash[rel(p)] = substr(l, 1, 64); next
    }
    part == "targets" { if (FNR % 2) lp = rel($0); else target[lp] = $0; next }
    {
      p = $0; for (i = 0; i < 5; i++) p = substr(p, index(p, " ") + 1)
      p = rel(p); k = substr($1, 1, length($1) - 3); s = "-"; d = "-"
      if (k == "8") { k = "f"; s = $4; d = (p in hash) ? hash[p] : "?" }
      else if (k == "4") k = "d"
      else if (k == "a") { k = "l"; s = $4; d = esc(target[p]) }
      else if (k == "2" || k == "6") { k = (k == "2") ? "c" : "b"; d = $5 }
      else if (k == "1") k = "p"
      else if (k == "c") k = "s"
      else k = "?"
      print esc(p) "\t" k "\t" $2 "\t" $3 "\t" s "\t" d
    }' part=sums "$rl_tmp/sums" part=targets "$rl_tmp/targets" part=stat "$rl_tmp/stat" > "$rl_tmp/lines" \
    || rl_err="cannot make the listing of $rl_root"
  [ -n "$rl_err" ] || LC_ALL=C sort "$rl_tmp/lines" > "$rl_out" || rl_err="cannot sort the listing of $rl_root"
  rm -rf "$rl_tmp"
  [ -z "$rl_err" ] || { printf '%s\n' "$rl_err"; return 1; }
}

# Whether the root $1 lists (osfleet_root_listing) as the sha256 $2 with $3 entries (a release's
# root_listing): prints "<sha256> <entries>" of the root when it does; else what differs (the
# counts, and the regular files that the root's own usr/share/osfleet/rootfs.sha256 does not name).
osfleet_check_listing() {
  cl_f=$(mktemp "${TMPDIR:-/tmp}/osfleet-listing.XXXXXX") || { echo "cannot create a temporary file"; return 1; }
  cl_msg=$(osfleet_root_listing "$1" "$cl_f") || { rm -f "$cl_f"; printf '%s\n' "$cl_msg"; return 1; }
  cl_sha=$(sha256sum < "$cl_f") || cl_sha=""; cl_sha=${cl_sha%% *}
  cl_n=$(wc -l < "$cl_f" | tr -d ' ')
  if [ -n "$cl_sha" ] && [ "$cl_sha" = "$2" ]; then
    rm -f "$cl_f"; printf '%s %s\n' "$cl_sha" "$cl_n"; return 0
  fi
  cl_extra=""
  if cl_list=$(osfleet_root_file "$1" usr/share/osfleet/rootfs.sha256); then
    cl_extra=$(awk -F'\t' 'FNR == NR { p = substr($0, 67); sub(/^\.\//, "", p); listed[p] = 1; next }
      $2 == "f" && !($1 in listed) && $1 != "usr/share/osfleet/rootfs.sha256" { n++; if (n <= 3) s = s " ./" $1 }
      END { if (n) printf "%d regular file(s) that its rootfs.sha256 does not name:%s%s", n, s, (n > 3 ? " ..." : "") }' \
      "$cl_list" "$cl_f")
  fi
  rm -f "$cl_f"
  cl_d=$((cl_n - $3))
  if [ "$cl_d" -gt 0 ]; then cl_d="$cl_d more than the release"; elif [ "$cl_d" -lt 0 ]; then cl_d="$((-cl_d)) fewer than the release"; else cl_d="as many as the release"; fi
  printf '%s\n' "its listing has $cl_n entries ($cl_d, whose root_listing has $3) and sha256 ${cl_sha:-?}, the catalog says $2${cl_extra:+; $cl_extra}"
  return 1
}

# The lock step's compare-and-swap of the update lock /mnt/state/osfleet/hup.lock (scripts/lock.sh,
# scripts/lock_step.sh): $1 = write|refresh|remove, under flock on its guard file, only while the
# file still shows $2 (owner|run_id|since as jq prints it, "" = no lock file). $3 is the new lock
# (JSON; a null since becomes the device's time, a null interrupted is dropped). write and refresh
# stamp it with the device's boot id and uptime (its age is measured with them, never with the
# wall clock); refresh changes nothing else. The guard is released on return.
osfleet_lock_cas() {
  lk_d=/mnt/state/osfleet; lk_f=$lk_d/hup.lock
  mkdir -p "$lk_d" || fail "cannot create $lk_d"
  exec 9>>"$lk_d/hup.lock.guard" || fail "cannot open $lk_d/hup.lock.guard"
  flock -x 9 || fail "cannot lock $lk_d/hup.lock.guard"
  lk_tok=""
  if [ -e "$lk_f" ]; then lk_tok=$(jq -r '"\(.owner)|\(.run_id)|\(.since)"' "$lk_f" 2>/dev/null) || lk_tok='?unreadable'; fi
  [ "$lk_tok" = "$2" ] || fail "the lock changed while this step ran (now: ${lk_tok:-no lock}; expected: ${2:-no lock}); run it again"
  if [ "$1" = remove ]; then
    rm -f "$lk_f" || fail "cannot remove $lk_f"
    sync
    exec 9>&-
    return 0
  fi
  lk_boot=$(cat /proc/sys/kernel/random/boot_id) || fail "cannot read the boot id"
  lk_up=$(cut -d' ' -f1 /proc/uptime) || fail "cannot read /proc/uptime"
  case $1 in
    write) lk_new=$3 ;;
    refresh) lk_new=$(cat "$lk_f") || fail "cannot read $lk_f" ;;
    *) fail "unknown operation $1" ;;
  esac
  printf '%s' "$lk_new" | jq --arg now "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg boot "$lk_boot" --argjson up "$lk_up" \
    '.since //= $now | .boot_id = $boot | .uptime = $up | if .interrupted == null then del(.interrupted) else . end' > "$lk_f.tmp" \
    || fail "cannot write $lk_f.tmp"
  sync
  mv "$lk_f.tmp" "$lk_f" || fail "cannot replace $lk_f"
  sync
  exec 9>&-
}

# Start the watchdog of the run $1 (scripts/watchdog.sh, plugin_utils/watchdog.py) as a detached
# process: $2 bound, $3 interval, $4 log are its parameters; $5 and $6 are the texts of the
# scripts it needs (watchdog.sh, apply.sh; each file gets a final newline). A watchdog of the same run that has not fired keeps running
# (prints "running"); one of another run is stopped first (its run lost the lock). Prints "started".
osfleet_watchdog_start() {
  ws_d=/run/osfleet/watchdog
  mkdir -p "$ws_d" || fail "cannot create $ws_d"
  ws_old=$(osfleet_read "$ws_d/pid")
  if [ -n "$ws_old" ] && kill -0 "$ws_old" 2>/dev/null; then
    if [ "$(osfleet_read "$ws_d/run")" = "$1" ] && [ ! -e "$ws_d/fired" ]; then echo running; return 0; fi
    rm -f "$ws_d/run"
    ws_rc=0
    osfleet_watchdog_end "$ws_old" || ws_rc=$?
    case $ws_rc in
      0 | 3) ;;
      1) fail "the watchdog of the previous run (pid $ws_old) does not stop (still there after SIGTERM and SIGKILL)" ;;
      *) fail "the watchdog of the previous run (pid $ws_old) stopped, but /var/lock/resinhup.lock is still held 10 s later" ;;
    esac
  fi
  rm -f "$ws_d/fired" "$ws_d/error" "$ws_d/disarm.ops" "$ws_d/disarm.hooks" "$ws_d/pid"
  printf '%s\n' "$5" > "$ws_d/watchdog.sh" || fail "cannot write $ws_d/watchdog.sh"
  printf '%s\n' "$6" > "$ws_d/apply.sh" || fail "cannot write $ws_d/apply.sh"
  printf '%s\n' "$1" > "$ws_d/run"
  cut -d' ' -f1 /proc/uptime > "$ws_d/heartbeat"
  setsid sh "$ws_d/watchdog.sh" "$1" "$2" "$3" "$4" </dev/null >/dev/null 2>&1 6>&- 7>&- 8>&- 9>&- &
  # it is up within milliseconds: looked for every 20 ms (the lock step waits on it), for at most 10 s
  ws_i=0
  while [ ! -f "$ws_d/pid" ] && [ ! -f "$ws_d/error" ] && [ "$ws_i" -lt 500 ]; do sleep 0.02; ws_i=$((ws_i + 1)); done
  [ -f "$ws_d/pid" ] || fail "the device-side watchdog did not start: $(osfleet_read "$ws_d/error")"
  echo started
}

# End the watchdog process $1: SIGTERM, and SIGKILL when it is not gone within 5 s (then 2 s more);
# then wait (at most 10 s) until /var/lock/resinhup.lock is free: a command the watchdog ran when it
# was killed (a sync of its refresh of the lock, seconds on a busy disk) inherited its hold of the
# lock and keeps it until that command ends. Returns 0 (it ended on SIGTERM), 3 (it ended on
# SIGKILL), 1 (it is still there), 2 (it ended, but the lock is still held).
osfleet_watchdog_end() {
  # gone within milliseconds of the TERM: looked for every 20 ms, for at most 5 s (then 2 s after a KILL)
  we_i=0 we_rc=0
  kill "$1" 2>/dev/null
  while kill -0 "$1" 2>/dev/null && [ "$we_i" -lt 250 ]; do sleep 0.02; we_i=$((we_i + 1)); done
  if kill -0 "$1" 2>/dev/null; then
    we_rc=3
    kill -KILL "$1" 2>/dev/null
    while kill -0 "$1" 2>/dev/null && [ "$we_i" -lt 350 ]; do sleep 0.02; we_i=$((we_i + 1)); done
    kill -0 "$1" 2>/dev/null && return 1
  fi
  { flock -w 10 9; } 9>>/var/lock/resinhup.lock 2>/dev/null || return 2
  return "$we_rc"
}

# Stop the watchdog of the run $1 (its run released the lock), so that /var/lock/resinhup.lock is
# free. Prints what became of it: "stopped" (it ended on SIGTERM), "killed" (not within 5 s: it
# ended on SIGKILL), "alive" (still there after SIGKILL), "lock-held" (it ended, but
# /var/lock/resinhup.lock is still held 10 s later), or "none" when no watchdog watches that run.
osfleet_watchdog_stop() {
  wt_d=/run/osfleet/watchdog
  [ "$(osfleet_read "$wt_d/run")" = "$1" ] || { echo none; return 0; }
  wt_pid=$(osfleet_read "$wt_d/pid")
  rm -f "$wt_d/run" "$wt_d/disarm.ops" "$wt_d/disarm.hooks"
  wt_rc=0
  if [ -n "$wt_pid" ]; then
    osfleet_watchdog_end "$wt_pid" || wt_rc=$?
  fi
  case $wt_rc in
    0) rm -f "$wt_d/pid"; echo stopped ;;
    3) rm -f "$wt_d/pid"; echo killed ;;
    1) echo "alive" ;;
    *) rm -f "$wt_d/pid"; echo lock-held ;;
  esac
}

# On a balenaOS (hostapp) device, before the new OS's hostapp-update hooks copy their boot files
# (plugin_utils/hooks.py): record the sha256 of the boot partition's keep-back files in $1
# (sha256sum lines, paths ./x relative to /mnt/boot), written atomically. $2 holds the
# boot-relative paths, one a line, "dir/" meaning the files below dir. Prints how many files it
# recorded.
osfleet_keepback_record() {
  kr_rec=$1 kr_list=$2
  mkdir -p "$(dirname "$kr_rec")" || fail "cannot create the directory of $kr_rec"
  kr_out=$(cd /mnt/boot || exit 1
    printf '%s\n' "$kr_list" | while IFS= read -r kr_p; do
      case $kr_p in
        '' | /* | *..*) ;;
        */) [ -d "./${kr_p%/}" ] && find -L "./${kr_p%/}" -type f -exec sha256sum {} + ;;
        *) [ -f "./$kr_p" ] && sha256sum "./$kr_p" ;;
      esac
    done | sort -k2 -u) || fail "cannot read /mnt/boot"
  if ! { if [ -n "$kr_out" ]; then printf '%s\n' "$kr_out"; fi; } > "$kr_rec.tmp" || ! mv "$kr_rec.tmp" "$kr_rec"; then fail "cannot write $kr_rec"; fi
  sync
  if [ -n "$kr_out" ]; then printf '%s\n' "$kr_out" | grep -c .; else echo 0; fi
}
