#!/usr/bin/env bash
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# bootloader.sh: the first process of a lab device (PID 1 of its own PID, mount and UTS
# namespaces, started by the device's power supply in tests/lab/osfleet_lab/device.py).
#
# It plays u-boot (bootcount / altboot on resin-boot, see docs/internals.md §2 and
# hostos-update-facts §9.5), builds the device's view of the world (its own /dev holding only
# its own disk, its root read-only, boot/state/data and both sysroots mounted), fakes
# /proc/cmdline and the boot id, pivots into the chosen root and exec's that OS's /sbin/init.
# Profile "ab": the root partition is the OS root. Profile "balenaos": the partition holds a
# hostapp; like a balenaOS initramfs + mobynit, the bootloader finds the kernel through the
# partition's `boot` link, runs the partition's own init (sbin/init -> current/boot/init) with
# `-sysroot` to mount the hostapp's layers as a read-only overlay, and makes that overlay `/`,
# with the raw partitions at /mnt/sysroot/active (read-only) and /mnt/sysroot/inactive.
# Any failure before the exec is a failed boot: exit 1 (the power supply boots again).
#
# Usage: bootloader.sh NAME LOOPDEV RUNDIR BOOTNO NETNS PROFILE KERNEL SSHPORT FAULTS LABEL...
#   NAME     device name (hostname)            LOOPDEV  /dev/loopN holding the device's disk
#   RUNDIR   host directory for mount points   BOOTNO   boot number (power supply's counter)
#   NETNS    1 when the device has its own network namespace (bring lo up), else 0
#   PROFILE  ab | balenaos                     KERNEL   kernel file name (balenaos: in /boot)
#   SSHPORT  the port the device's sshd listens on, on the kernel command line
#            (osfleet_lab_ssh_port): the OS records it in /mnt/state/lab/device.env when a
#            fresh state partition (a whole-disk write) has none
#   FAULTS   the device's fault file (labctl fault, osfleet_lab/faults.py; absent: no fault):
#            kinds=<health,boot> and root=<label>. Every root but <label> (the one the device ran
#            when the fault was set) boots with the fault: health = its balena-healthcheck, boot =
#            its /sbin/init replaced by those of os/faults/<kind> (bind mounts; the disk is untouched)
#   LABEL... GPT partition labels in partition order (LABEL 1 is partition 1)
#
# Console lines this writes (the lab and the tests parse them):
#   BOOT <n> root=<label> bootcount=<c> upgrade_available=<u>
#   ALTBOOT bootcount=<c> os_bc_lim=<l> resin_root_part=<hex> -> <hex>
#   BOOTFAIL <reason>
#   LABFAULT <kind> root=<label> (set on <label>): /<path> replaced
set -u

NAME=$1 LOOP=$2 RUN=$3 BOOTNO=$4 NETNS=$5 PROFILE=$6 KERNEL=$7 SSHPORT=$8 FAULTS=$9
shift 9
LABELS=("$@")

say() { printf '[bootloader] %s\n' "$*"; }
fail() { printf 'BOOTFAIL %s\n' "$*"; exit 1; }

# partition node of 1-based index $1: /dev/loop3 -> /dev/loop3p2
part_node() { printf '%sp%s' "$LOOP" "$1"; }

# index of a partition label, or empty
label_index() {
    local i
    for i in "${!LABELS[@]}"; do
        [ "${LABELS[$i]}" = "$1" ] && { echo $((i + 1)); return 0; }
    done
    return 1
}

# value of the last "key=value" line for key $2 in file $1 (empty if none); never sources it
env_get() {
    local file=$1 key=$2 line value=""
    [ -f "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}
        case $line in "$key="*) value=${line#"$key="} ;; esac
    done <"$file"
    printf '%s' "$value"
}

is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

BOOT_IDX=$(label_index resin-boot) || fail "no resin-boot partition in layout"
ROOTA_IDX=$(label_index resin-rootA) || fail "no resin-rootA partition in layout"
ROOTB_IDX=$(label_index resin-rootB) || fail "no resin-rootB partition in layout"
STATE_IDX=$(label_index resin-state) || fail "no resin-state partition in layout"
DATA_IDX=$(label_index resin-data) || fail "no resin-data partition in layout"

mkdir -p "$RUN/boot" "$RUN/root" || fail "cannot create $RUN"
mount -t ext4 "$(part_node "$BOOT_IDX")" "$RUN/boot" || fail "cannot mount resin-boot"

# --- u-boot: env import order resinOS_uEnv.txt, extra_uEnv.txt, bootcount.env -----------------
B=$RUN/boot
root_part=$(env_get "$B/resinOS_uEnv.txt" resin_root_part)
upgrade_available=$(env_get "$B/resinOS_uEnv.txt" upgrade_available)
bc_lim=$(env_get "$B/extra_uEnv.txt" os_bc_lim)
bootcount=$(env_get "$B/bootcount.env" bootcount)
is_uint "$bc_lim" || bc_lim=3
is_uint "$bootcount" || bootcount=0
[ "$upgrade_available" = 1 ] || upgrade_available=0
case $root_part in
    [0-9a-fA-F] | [0-9a-fA-F][0-9a-fA-F]) root_idx=$((16#$root_part)) ;;
    *) root_idx=0 ;;
esac
if [ "$root_idx" != "$ROOTA_IDX" ] && [ "$root_idx" != "$ROOTB_IDX" ]; then
    say "resin_root_part=${root_part:-<unset>} is not a root partition: booting the default root"
    root_idx=$ROOTA_IDX
fi

if [ "$upgrade_available" = 1 ]; then
    bootcount=$((bootcount + 1))
    if ! { printf 'bootcount=%s\n' "$bootcount" >"$B/bootcount.env.tmp" &&
        mv "$B/bootcount.env.tmp" "$B/bootcount.env" && sync "$B/bootcount.env"; }; then
        fail "cannot write bootcount.env"
    fi
fi

if [ "$bootcount" -gt "$bc_lim" ]; then
    # resin_check_altroot: swap in memory only, the file keeps naming the failing root
    old_idx=$root_idx
    if [ "$root_idx" = "$ROOTA_IDX" ]; then root_idx=$ROOTB_IDX; else root_idx=$ROOTA_IDX; fi
    printf 'ALTBOOT bootcount=%s os_bc_lim=%s resin_root_part=%x -> %x\n' \
        "$bootcount" "$bc_lim" "$old_idx" "$root_idx"
fi
if [ "$root_idx" = "$ROOTA_IDX" ]; then other_idx=$ROOTB_IDX; else other_idx=$ROOTA_IDX; fi

ROOT_LABEL=${LABELS[$((root_idx - 1))]}
printf 'BOOT %s root=%s bootcount=%s upgrade_available=%s\n' \
    "$BOOTNO" "$ROOT_LABEL" "$bootcount" "$upgrade_available"
sync "$B" 2>/dev/null

# --- the device's mounts ----------------------------------------------------------------------
R=$RUN/root
ROOT_DEV=$(part_node "$root_idx")

# resolve_in ROOT PATH: PATH below ROOT with its links followed, which must stay inside ROOT
resolve_in() {
    local p
    p=$(realpath -e "$1/$2" 2>/dev/null) || return 1
    case $p in "$1"/*) printf '%s' "$p" ;; *) return 1 ;; esac
}

mount_hostapp() { # the balenaOS initramfs + mobynit, for the partition $ROOT_DEV
    local P=$RUN/sysroot kernel init merged
    mkdir -p "$P" || fail "cannot create $P"
    mount -t ext4 "$ROOT_DEV" "$P" || fail "cannot mount $ROOT_LABEL"
    [ -d "$P/dev" ] || fail "$ROOT_LABEL is not a balenaOS root (no /dev)"
    if ! kernel=$(resolve_in "$P" "boot/$KERNEL") || [ ! -f "$kernel" ]; then
        fail "$ROOT_LABEL has no kernel: no /boot/$KERNEL through its boot link"
    fi
    if ! init=$(resolve_in "$P" sbin/init) || [ ! -f "$init" ]; then
        fail "$ROOT_LABEL has no /sbin/init (current/boot/init)"
    fi
    say "kernel ${kernel#"$P"/}, init ${init#"$P"/}"
    merged=$(cd "$P" && sh "$init" -sysroot .) || fail "$ROOT_LABEL: its init could not mount the hostapp"
    merged=$P/${merged#./}
    case $merged in "$P"/balena/overlay2/*/merged) ;; *) fail "$ROOT_LABEL: its init mounted an unexpected path $merged" ;; esac
    mount --move "$merged" "$R" || fail "cannot move the hostapp root"
    [ -d "$R/mnt/sysroot/active" ] || fail "$ROOT_LABEL: the hostapp has no /mnt/sysroot/active"
    if ! mount --bind "$P" "$R/mnt/sysroot/active" || ! mount -o remount,bind,ro "$R/mnt/sysroot/active"; then
        fail "cannot mount the active sysroot"
    fi
    umount "$P" || fail "cannot release $P"
}

if [ "$PROFILE" = balenaos ]; then
    mount_hostapp
else
    mount -t ext4 -o ro "$ROOT_DEV" "$R" || fail "cannot mount $ROOT_LABEL read-only"
fi
for d in dev proc sys mnt/boot mnt/state mnt/data mnt/sysroot/active mnt/sysroot/inactive; do
    [ -d "$R/$d" ] || fail "$ROOT_LABEL has no /$d mount point"
done
mount --move "$B" "$R/mnt/boot" || fail "cannot move resin-boot"
mount -t ext4 "$(part_node "$STATE_IDX")" "$R/mnt/state" || fail "cannot mount resin-state"
mount -t ext4 "$(part_node "$DATA_IDX")" "$R/mnt/data" || fail "cannot mount resin-data"
if [ "$PROFILE" != balenaos ]; then
    mount -t ext4 -o ro "$ROOT_DEV" "$R/mnt/sysroot/active" || fail "cannot mount the active sysroot"
fi
mount -t ext4 "$(part_node "$other_idx")" "$R/mnt/sysroot/inactive" ||
    say "cannot mount ${LABELS[$((other_idx - 1))]} at /mnt/sysroot/inactive (no filesystem?)"

# private /dev: only this device's disk, the usual character devices, its own devpts
mount -t tmpfs -o mode=0755,size=1m,nosuid dev "$R/dev" || fail "cannot mount /dev"
mknod_like() { # NAME (under $R/dev) SYSFS_DEV_FILE
    local majmin
    majmin=$(cat "$2") || return 1
    mknod -m 0660 "$R/dev/$1" b "${majmin%%:*}" "${majmin##*:}"
}
mknod_like "${LOOP#/dev/}" "/sys/class/block/${LOOP#/dev/}/dev" || fail "cannot create ${LOOP}"
mkdir -p "$R/dev/disk/by-partlabel" "$R/dev/disk/by-label" "$R/dev/pts" "$R/dev/shm"
for i in "${!LABELS[@]}"; do
    n=$((i + 1))
    node=$(part_node "$n")
    mknod_like "${node#/dev/}" "/sys/class/block/${node#/dev/}/dev" || fail "cannot create $node"
    ln -s "../../${node#/dev/}" "$R/dev/disk/by-partlabel/${LABELS[$i]}"
    fslabel=$(blkid -c /dev/null -o value -s LABEL "$node" 2>/dev/null)
    [ -n "$fslabel" ] && ln -sf "../../${node#/dev/}" "$R/dev/disk/by-label/$fslabel"
done
for chr in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r chr_name chr_major chr_minor <<<"$chr"
    mknod -m 0666 "$R/dev/$chr_name" c "$chr_major" "$chr_minor" || fail "cannot create /dev/$chr_name"
done
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts" ||
    fail "cannot mount devpts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,size=16m,nosuid,nodev shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"

mount -t proc -o nosuid,nodev,noexec proc "$R/proc" || fail "cannot mount /proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys" || fail "cannot mount /sys"

# fake kernel command line and a fresh boot id (bind mounts of files in RUN)
F=$RUN/fake
mkdir -p "$F" || fail "cannot create $F"
mount -t tmpfs -o size=16k,mode=0755 lab-fake "$F" || fail "cannot mount $F"
printf 'root=%s rootfstype=ext4 ro rootwait resin_root_part=%x osfleet_lab_device=%s osfleet_lab_profile=%s osfleet_lab_ssh_port=%s\n' \
    "$ROOT_DEV" "$root_idx" "$NAME" "$PROFILE" "$SSHPORT" >"$F/cmdline"
cat /proc/sys/kernel/random/uuid >"$F/boot_id"
mount --bind -o ro "$F/cmdline" "$R/proc/cmdline" || fail "cannot fake /proc/cmdline"
mount --bind -o ro "$F/boot_id" "$R/proc/sys/kernel/random/boot_id" || fail "cannot fake the boot id"

# lab faults (labctl fault NAME health|boot): the file of os/faults/<kind> over the OS's own, in
# every root but the one the fault was set on (that one keeps booting as it is)
fault_kinds=$(env_get "$FAULTS" kinds)
fault_root=$(env_get "$FAULTS" root)
if [ -n "$fault_kinds" ] && [ "$ROOT_LABEL" != "$fault_root" ]; then
    for kind in ${fault_kinds//,/ }; do
        case $kind in
            health) target=usr/lib/balena/balena-healthcheck ;;
            boot) target=sbin/init ;;
            *) continue ;;
        esac
        src=${BASH_SOURCE[0]%/*}/os/faults/$kind/$target
        if dst=$(resolve_in "$R" "$target") && [ -f "$dst" ] && cp "$src" "$F/fault-$kind" &&
            chmod 0755 "$F/fault-$kind" && mount --bind -o ro "$F/fault-$kind" "$dst"; then
            printf 'LABFAULT %s root=%s (set on %s): /%s replaced\n' "$kind" "$ROOT_LABEL" "$fault_root" "$target"
        else
            say "lab fault $kind: cannot replace /$target of $ROOT_LABEL: booting it unchanged"
        fi
    done
fi
umount -l "$F"

hostname "$NAME" || fail "cannot set hostname"
if [ "$NETNS" = 1 ]; then
    ip link set lo up || fail "cannot bring up lo"
fi

# --- hand over to the OS ------------------------------------------------------------------------
cd "$R" || fail "cannot enter the new root"
pivot_root . . || fail "pivot_root failed"
# The host root now sits on top of the new one: detach it. From here on only the device's own
# files exist: forget remembered host paths and use no host binary.
hash -r
umount -l . || fail "cannot detach the host root (no umount in $ROOT_LABEL?)"
cd / || fail "cannot enter /"
[ -x /sbin/init ] || fail "$ROOT_LABEL has no executable /sbin/init"
unset OSFLEET_LAB_OWNER # the host's mark of the lab's processes (lab.py stray_processes)
# shellcheck disable=SC2093  # the exec only returns when it failed
exec /sbin/init
fail "exec /sbin/init failed"
