#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# Carries out a plan's file operations (plugin_utils/fileops.py) atomically. ops (stdin) is a JSON
# list of [op, destination, value] triples: ["put", dst, content], ["copy", dst, src], ["del", dst, ""].
# Every new file is first written next to its destination as <dst>.osfleet-tmp, all of them are
# synced; if a write fails (a full partition), the temporaries are removed and nothing has changed.
# Then each operation in plan order, each one synced before the next (the plan's order is the order
# on disk: breadcrumbs in /mnt/state before the bootloader env that needs them). No rename goes
# over an existing file (vfat cannot do that atomically): an existing <dst> is first renamed to
# <dst>.osfleet-old.osfleet-tmp, synced, then <dst>.osfleet-tmp to <dst>, synced, then the old
# copy is removed. A <dst> that a power cut left missing between the two renames is put back from
# its old copy before anything else.

ops=$(cat)
T=.osfleet-tmp
O=.osfleet-old$T
# In one jq (a jq start costs ~25 ms of a device's CPU), as shell assignments quoted with @sh:
# list, the op, destination and (for copy) source, one per line as a command substitution of
# jq -r gives them (paths never hold a line break), and content_<i>, the content of the put at
# position i, exactly.
list=""; content=""
# shellcheck disable=SC2016  # jq's variables
vars=$(printf '%s' "$ops" | jq -r '
  if type == "array" and all(.[]; type == "array" and length == 3 and all(.[]; type == "string")) | not
  then error("file operations come in triples") else . end
  | if any(.[]; (.[1] | test("\n")) or (.[0] == "copy" and (.[2] | test("\n"))))
    then error("refusing a path with a line break") else . end
  | "list=\([.[] | .[0], .[1], (if .[0] == "copy" then .[2] else "-" end)] | join("\n") | until(endswith("\n") | not; .[:-1]) | @sh)",
    (to_entries[] | select(.value[0] == "put") | "content_\(.key)=\(.value[2] | @sh)")') \
  || fail "file operations come in triples (a JSON list of [op, destination, value])"
eval "$vars"
# run "$@" for each operation, with $i (its index), $op, $dst and $src set
each() {
  i=0
  while IFS= read -r op && IFS= read -r dst && IFS= read -r src; do
    "$@" || return 1
    i=$((i + 1))
  done <<EOF_OPS
$list
EOF_OPS
}
# a copy's source in a root (/mnt/sysroot/active or inactive) is read with that root's links
# resolved inside it, never from the running system (an absolute link of a staged root)
resolve_src() {
  case "$src" in
    /mnt/sysroot/active/*|/mnt/sysroot/inactive/*)
      r=${src#/mnt/sysroot/}; r=/mnt/sysroot/${r%%/*}
      o=$src; src=$(osfleet_in_root "$r" "${o#"$r"/}") || fail "the source $o: $src";;
  esac
}
check_one() {
  case "$dst" in /mnt/boot/?*|/mnt/state/?*) ;; *) fail "refusing to write $dst";; esac
  case "$dst" in */../*|*/..|*/./*|*//*) fail "refusing the path $dst";; esac
  [ -d "$dst" ] && fail "$dst is a directory"
  case "$op" in
    put|del) ;;
    copy) resolve_src; [ -f "$src" ] || fail "the source $src is missing";;
    *) fail "unknown file operation $op";;
  esac
  return 0
}
# sync the file system that holds $1 (all of them where sync -f is missing)
sync_fs() { sync -f "$1" 2>/dev/null || sync; }
restore_one() {
  if [ ! -e "$dst" ] && [ -f "$dst$O" ]; then mv "$dst$O" "$dst" && sync_fs "$dst" || return 1; fi
  return 0
}
unstage_one() { case "$op" in put|copy) rm -f "$dst$T";; esac; }
stage_one() {
  case "$op" in
    put) # the content, exactly (content_<i>: read with the list)
         eval "content=\$content_$i"
         { mkdir -p "$(dirname "$dst")" && printf '%s' "$content" > "$dst$T"; } || { echo "cannot write $dst$T" >&2; return 1; };;
    copy) resolve_src; { mkdir -p "$(dirname "$dst")" && cat "$src" > "$dst$T"; } || { echo "cannot copy $src to $dst$T" >&2; return 1; };;
  esac
}
commit_one() {
  case "$op" in
    put|copy)
      if [ -e "$dst" ]; then rm -f "$dst$O" && mv "$dst" "$dst$O" && sync_fs "$dst$O" || return 1; fi
      mv "$dst$T" "$dst" && sync_fs "$dst" || return 1
      rm -f "$dst$O";;
    del) rm -f "$dst" && sync_fs "$(dirname "$dst")" || return 1;;
  esac
}
[ -z "$list" ] && exit 0
each check_one
each restore_one || fail "cannot put back a file that an interrupted run left as its old copy"
if ! each stage_one; then each unstage_one; sync; fail "writing the new files failed; nothing was changed"; fi
sync
each commit_one || { sync; fail "renaming the new files into place failed part way"; }
sync
