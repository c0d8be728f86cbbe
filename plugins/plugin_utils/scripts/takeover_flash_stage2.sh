#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The advanced update's whole-disk write, part 2: the device's PID 1 (the reference's takeover
# stage 2, hostos-update-facts §10.2). scripts/takeover_flash.sh writes this text, behind a
# shebang naming the busybox it copied into the staging RAM filesystem and a line W=<staging
# dir>, to W/flash/stage2 and binds it over the file PID 1 executes on `telinit u`; it never runs
# from the disk and needs nothing of it. It pivots into W (the old root at /oldroot), kills every
# other process, unmounts the old root and its partitions, removes the disk's partitions from the
# kernel (partx -d), writes the decompressed image onto the whole disk, compares the disk with
# the image, re-reads the partition table (partx -a), restores the kept files onto the NEW boot
# partition (checked against their sha256), puts the device's next SSH host key on the new state
# partition (at the path flash/hostkey/path names inside its filesystem), leaves the flash log advanced.<ts>.log, the record takeover.json and the run's own
# log (carried over) in balenahup/ on the new data partition, and reboots (reboot -f). A failure before the disk is written puts the
# old partitions back, leaves the log on the old data partition and reboots into the old OS. The
# log also goes to PID 1's standard output (the console).

# shellcheck disable=SC2154 # W: the line takeover_flash.sh puts in front of this text
PATH=$W/bin
export PATH
R=$W
DISK=$(cat "$W/flash/disk")
TS=$(cat "$W/flash/ts")
DN=${DISK##*/}
WRITTEN=0

log() {
  printf '%s takeover stage 2: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | tee -a "$R/advanced.log"
}

# the kernel's partitions of the disk now
parts() {
  n=0
  for sys in "/sys/class/block/$DN/$DN"p*; do
    if [ -e "$sys" ]; then n=$((n + 1)); fi
  done
  echo "$n"
}

# make /dev nodes for the disk's partitions as the kernel has them now (numbers change on a re-read)
nodes() {
  for sys in "/sys/class/block/$DN/$DN"p*; do
    [ -r "$sys/dev" ] || continue
    node=/dev/${sys##*/}
    majmin=$(cat "$sys/dev")
    rm -f "$node"
    mknod -m 0660 "$node" b "${majmin%%:*}" "${majmin##*:}"
  done
}

# the node of the partition named $1 in the disk's (new) table
part_named() {
  nr=$(partx -g -o NR,NAME "$DISK" 2>/dev/null | awk -v n="$1" '$2 == n {print $1; exit}')
  [ -n "$nr" ] && printf '/dev/%sp%s' "$DN" "$nr"
}

# persist the log on the data partition (the new one once the disk is written), then reboot
finish() {
  log "$1"
  data=$(part_named resin-data)
  mkdir -p /mnt/data
  if [ -n "$data" ] && mount "$data" /mnt/data; then
    mkdir -p /mnt/data/balenahup
    if [ "$WRITTEN" = 1 ] && [ -f /flash/record.json ]; then cp /flash/record.json /mnt/data/balenahup/takeover.json; fi
    # the run's own log (scripts/takeover_flash.sh copied it): it goes on on the new data partition
    if [ "$WRITTEN" = 1 ]; then
      for f in /flash/carry/*; do
        if [ -f "$f" ]; then cp "$f" "/mnt/data/balenahup/${f##*/}"; fi
      done
    fi
    log "rebooting (reboot -f)"
    cp "$R/advanced.log" "/mnt/data/balenahup/advanced.$TS.log"
    sync
    umount /mnt/data
  else
    log "cannot mount the data partition: the log is only on the console; rebooting (reboot -f)"
  fi
  sync
  reboot -f
  sleep 5
  exit 1
}

# a failure before the disk was written: its partitions back, the old OS boots again
abort() {
  partx -a "$DISK" 2>/dev/null
  nodes
  finish "FAILED, nothing was written to $DISK: $1"
}

log "PID 1 runs from RAM ($W); disk $DISK, image $W/image.img.gz"
for d in oldroot proc sys dev mnt/boot mnt/state mnt/data; do mkdir -p "$W/$d"; done
for fs in dev proc sys; do
  mount --move "/$fs" "$W/$fs" || log "cannot move /$fs into RAM"
done
cd "$W" || finish "cannot enter $W"
pivot_root . oldroot || finish "pivot_root into $W failed"
cd / || exit 1
R=""
PATH=/bin
log "pivoted into RAM; stopping every other process"
kill -TERM -1 2>/dev/null
sleep 2
kill -KILL -1 2>/dev/null
sleep 0.5
for _pass in 1 2 3; do
  awk '$2 ~ /^\/oldroot/ {print $2}' /proc/mounts | sort -r > /flash/mounts
  while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  done < /flash/mounts
done
left=$(awk '$2 ~ /^\/oldroot/' /proc/mounts | wc -l)
log "unmounted the old root and the disk's partitions ($left mounts left)"
sync
tries=0
while [ "$(parts)" -gt 0 ]; do
  partx -d "$DISK" 2>/dev/null
  [ "$(parts)" -gt 0 ] || break
  tries=$((tries + 1))
  [ "$tries" -lt 40 ] || abort "the partitions of $DISK are still busy after 20 s"
  sleep 0.5
done
log "removed the old partitions of $DISK from the kernel; writing the disk image"
WRITTEN=1
{ gunzip -c /image.img.gz; echo "$?" > /flash/gunzip.rc; } | dd of="$DISK" bs=4M conv=fsync 2>> /advanced.log
dd_rc=$?
if [ "$dd_rc" != 0 ] || [ "$(cat /flash/gunzip.rc)" != 0 ]; then
  finish "FAILED: writing the disk image onto $DISK failed (gunzip $(cat /flash/gunzip.rc), dd $dd_rc); the disk holds part of it"
fi
sync
blockdev --flushbufs "$DISK" 2>/dev/null
out=$(gunzip -c /image.img.gz | cmp - "$DISK" 2>&1)
case $out in
  *"EOF on -"*|'') log "wrote $DISK and read it back: it holds the disk image" ;;
  *) finish "FAILED: $DISK differs from the disk image after the write ($out)" ;;
esac
partx -a "$DISK" 2>> /advanced.log
nodes
log "re-read the partition table of $DISK: $(parts) partitions ($(partx -g -o NR,START,SECTORS,NAME "$DISK" 2>/dev/null | tr '\n' ';'))"
boot=$(part_named resin-boot)
[ -n "$boot" ] || finish "FAILED: the new partition table has no resin-boot"
mount "$boot" /mnt/boot || finish "FAILED: cannot mount the new boot partition $boot"
cp -R /keep/. /mnt/boot/ || log "FAILED to copy every kept file onto the new boot partition"
sync
if check=$(cd /mnt/boot && sha256sum -c /flash/keep.sha256 2>&1); then
  log "restored the kept files onto the new boot partition $boot: $(printf '%s' "$check" | tr '\n' ';')"
else
  log "FAILED: the kept files on the new boot partition differ: $(printf '%s' "$check" | tr '\n' ';')"
fi
umount /mnt/boot
state=$(part_named resin-state)
key=$(cat /flash/hostkey/path)
if [ -n "$state" ] && mount "$state" /mnt/state; then
  kdir=/mnt/state${key%/*}
  if { [ "$kdir" = /mnt/state ] || { mkdir -p "$kdir" && chmod 0700 "$kdir"; }; } && cp /flash/hostkey/key "/mnt/state$key" \
     && cp /flash/hostkey/key.pub "/mnt/state$key.pub" && chmod 0600 "/mnt/state$key"; then
    log "put the device's next SSH host key on the new state partition $state at $key"
  else
    log "FAILED to put the device's next SSH host key on the new state partition $state at $key"
  fi
  sync
  umount /mnt/state
else
  log "cannot mount the new state partition: the new OS makes its own host key"
fi
finish "the disk holds the new OS"
