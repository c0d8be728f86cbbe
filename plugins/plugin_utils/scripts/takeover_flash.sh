#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The advanced update's whole-disk write, part 1 (plugin_utils/steps/takeover.py; the reference's
# takeover stage 1, hostos-update-facts §10.2): everything is checked and prepared in the staging
# RAM filesystem dir, then PID 1 is moved off the disk and the write goes on without this session.
# Under the writer lock: the staging record must name the disk image sha256, and the staged image
# must still have that sha256 (read again now: a damaged image is refused, nothing is written).
# The image's own partition table is read from its first MiB (sfdisk). Into dir go: the busybox
# and partx that stage 2 runs (with their libraries, so that nothing of the disk is needed), the
# sha256 list of the kept files, the device's next SSH host key (generated here, of key_type: the
# controller pins it for the reconnect, stage 2 puts it at key_path inside the new state
# partition's filesystem, where the sshd reads it: steps/takeover.host_key_home), the record stage 2
# leaves on the new data partition, and stage 2 itself (scripts/takeover_flash_stage2.sh, given
# on standard input). The device's services (supervisor, user apps, engine) are stopped, stage 2
# is bound over the file PID 1 executes again on `telinit u`, and `telinit u` runs detached a
# second after this script has printed its JSON (the image's table, the new host key, the log's
# name): from there on the device writes its disk and reboots by itself.
# carry: the run's own log (a file in /mnt/data/balenahup/, or empty): copied into dir, stage 2
# puts it back on the new data partition, so that the log of the run survives the write.

dir=$1 sha256=$2 raw_size=$3 version=$4 ts=$5 carry=$6 key_path=$7 key_type=$8 stage2=$(cat)
case $dir in /*) ;; *) fail "takeover_flash: the staging directory must be absolute, got '$dir'" ;; esac
case $dir in *[!A-Za-z0-9/._-]*|/|*/..|*/../*) fail "takeover_flash: unsafe staging directory '$dir'" ;; esac
case $sha256 in *[!0-9a-f]*|'') fail "takeover_flash: bad sha256 '$sha256'" ;; esac
case $ts in *[!0-9TZ-]*|'') fail "takeover_flash: bad time stamp '$ts'" ;; esac
case $raw_size in *[!0-9]*|'') fail "takeover_flash: bad raw_size '$raw_size'" ;; esac
case $carry in ''|/mnt/data/balenahup/*) ;; *) fail "takeover_flash: the log to carry must be in /mnt/data/balenahup/, got '$carry'" ;; esac
case $key_path in /*) ;; *) fail "takeover_flash: the host key path must be absolute, got '$key_path'" ;; esac
case $key_path in *[!A-Za-z0-9/._-]*|*/|*//*|*/.|*/./*|*/..|*/../*) fail "takeover_flash: unsafe host key path '$key_path'" ;; esac
case $key_type in ed25519|ecdsa|rsa) ;; *) fail "takeover_flash: bad host key type '$key_type'" ;; esac
case ${carry#/mnt/data/balenahup/} in */*|.*|*[!A-Za-z0-9._-]*) fail "takeover_flash: unsafe log name '$carry'" ;; esac
osfleet_writer_lock
img=$dir/image.img.gz
fstype=$(awk -v d="$dir" '$2 == d {t = $3} END {print t}' /proc/mounts)
[ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ] || fail "$dir is not a RAM filesystem (${fstype:-not mounted}): stage the disk image first (state=staged); nothing was written"
have=$(jq -r '.sha256 // empty' "$dir/staged.json" 2>/dev/null) || have=""
[ "$have" = "$sha256" ] || fail "the staging in $dir holds ${have:-no record}, not the disk image $sha256: stage it first (state=staged); nothing was written"
[ -f "$img" ] || fail "the staging in $dir has no disk image: stage it first (state=staged); nothing was written"
found=$(sha256sum "$img" | cut -d' ' -f1)
[ "$found" = "$sha256" ] || fail "the staged disk image has sha256 $found now, not the catalog's $sha256 (damaged in RAM): refusing to write it; nothing was written to the disk"
boot=$(readlink -f /dev/disk/by-partlabel/resin-boot 2>/dev/null) || boot=""
[ -b "$boot" ] || fail "no resin-boot partition (/dev/disk/by-partlabel/resin-boot)"
disk=$(readlink -f "/sys/class/block/${boot##*/}/..") || disk=""
disk=/dev/${disk##*/}
[ -b "$disk" ] || fail "cannot find the disk that holds $boot ($disk is no block device)"
command -v telinit >/dev/null 2>&1 || fail "this device has no telinit: PID 1 cannot be moved off the disk; nothing was written"
command -v partx >/dev/null 2>&1 || fail "this device has no partx: the new partition table could not be read; nothing was written"
bb=""
for cand in /bin/busybox /usr/bin/busybox /sbin/busybox /usr/sbin/busybox; do
  if [ -x "$cand" ]; then bb=$cand; break; fi
done
[ -n "$bb" ] || fail "this device has no busybox: stage 2 has no shell in RAM; nothing was written"
W=$dir/flash
rm -rf "${W:?}" "${dir:?}/bin" "${dir:?}/lib" "${dir:?}/lib64" "${dir:?}/usr" "${dir:?}/advanced.log"
mkdir -p "$W/hostkey" "$dir/bin" || fail "cannot create $W"

# the image's partition table: the GPT in its first MiB, on a sparse file of the image's size
gunzip -c "$img" 2>/dev/null | head -c 1048576 > "$W/gpt.img"
truncate -s "$raw_size" "$W/gpt.img" || fail "cannot read the partition table of the disk image"
table=$(sfdisk -J "$W/gpt.img" 2>/dev/null | jq -c '[.partitiontable.partitions[] | {start, size, name}]') || table=""
rm -f "$W/gpt.img"
case $table in ''|'[]') fail "the staged disk image has no readable partition table; nothing was written" ;; esac

# stage 2's programs, with their libraries at the same paths (the staging becomes the root)
copy_prog() {
  cp -L "$1" "$dir/bin/${1##*/}" || return 1
  ld=""
  for cand in /lib64/ld-linux-*.so.* /lib/ld-linux*.so.* /lib/ld-musl-*.so.*; do [ -e "$cand" ] && ld=$cand && break; done
  [ -n "$ld" ] || return 0
  libs=$("$ld" --list "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}') || return 0
  for lib in $libs; do
    mkdir -p "$dir${lib%/*}" || return 1
    cp -L "$lib" "$dir$lib" || return 1
  done
}
copy_prog "$bb" || fail "cannot copy busybox into $dir"
px=$(command -v partx) || px=""
case $px in /*) ;; *) fail "this device has no partx: the new partition table could not be read; nothing was written" ;; esac
copy_prog "$px" || fail "cannot copy partx into $dir"
for applet in sh cat cp mkdir rm ln chmod mount umount mknod sync sleep kill dd gunzip cmp sha256sum awk sed tr head tail grep sort date tee blockdev pivot_root reboot ls wc; do
  ln -sf busybox "$dir/bin/$applet"
done

# what stage 2 checks, restores and leaves behind
jq -r '.keep[] | "\(.sha256)  \(.path)"' "$dir/staged.json" > "$W/keep.sha256" || fail "cannot read the kept files of $dir/staged.json"
ssh-keygen -q -t "$key_type" -N '' -C "root@$(hostname)" -f "$W/hostkey/key" < /dev/null > /dev/null 2>&1 \
  || fail "cannot generate the device's next SSH host key ($key_type)"
printf '%s\n' "$key_path" > "$W/hostkey/path" || fail "cannot write $W/hostkey/path"
hostkey=$(cat "$W/hostkey/key.pub")
jq -c --arg version "$version" --arg ts "$ts" --argjson table "$table" --arg disk "$disk" --arg hostkey "$hostkey" \
  '{sha256, url, size, keep, version: $version, time: $ts, disk: $disk, table: $table, host_key: $hostkey,
    log: ("/mnt/data/balenahup/advanced." + $ts + ".log")}' "$dir/staged.json" > "$W/record.json" \
  || fail "cannot write the flash record"
printf '%s\n' "$disk" > "$W/disk"; printf '%s\n' "$ts" > "$W/ts"
mkdir -p "$W/carry" || fail "cannot create $W/carry"
if [ -n "$carry" ] && [ -f "$carry" ] && [ ! -L "$carry" ]; then
  cp "$carry" "$W/carry/${carry##*/}" || fail "cannot copy the run log $carry into $dir"
fi
{ printf '#!%s/bin/sh\nW=%s\n' "$dir" "$dir"; printf '%s\n' "$stage2"; } > "$W/stage2" || fail "cannot write stage 2"
chmod 0755 "$W/stage2" || fail "cannot write stage 2"
init=$(readlink -f /sbin/init) || fail "cannot resolve /sbin/init"

# from here on the device stops serving: its services first, then PID 1 moves into RAM
stopped=""
for svc in balena-supervisor user-app balena; do
  if systemctl stop "$svc" > /dev/null 2>&1; then stopped="$stopped $svc"; fi
done
mount --bind "$W/stage2" "$init" || fail "cannot bind stage 2 over $init; nothing was written"
jq -cn --argjson table "$table" --arg disk "$disk" --arg hostkey "$hostkey" --arg stopped "${stopped# }" --arg ts "$ts" \
  '{disk: $disk, table: $table, host_key: $hostkey, stopped: ($stopped | split(" ") | map(select(. != ""))),
    log: ("/mnt/data/balenahup/advanced." + $ts + ".log")}'
exec 8>&-
setsid sh -c 'sleep 1; telinit u' > /dev/null 2>&1 < /dev/null 7>&- & sleep 0.5
