# shellcheck shell=sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# shellcheck disable=SC2034  # the constants are for the scripts that source this file
# Shared helpers of the osfleet lab OS (sourced by /sbin/init, systemctl, the rollback tools and
# the hostapp-update hooks). POSIX sh: works under busybox ash and bash.

OSFLEET_BOOT=/mnt/boot
OSFLEET_STATE=/mnt/state
OSFLEET_UENV=$OSFLEET_BOOT/resinOS_uEnv.txt
OSFLEET_BOOTCOUNT=$OSFLEET_BOOT/bootcount.env
OSFLEET_ROOT_LABELS="resin-rootA resin-rootB"

# Print a line on stderr and on the device console (PID 1's stdout, which the lab records).
console() {
    printf '%s\n' "$*" >&2
    if [ "$$" != 1 ] && [ -e /proc/1/fd/1 ]; then
        printf '%s\n' "$*" 2>/dev/null >>/proc/1/fd/1
    fi
    return 0
}

# Value of the last "KEY=value" line for KEY $2 in file $1 (quotes stripped); never sources it.
kv_get() {
    _kv_file=$1 _kv_key=$2 _kv_val=
    [ -r "$_kv_file" ] || return 0
    while IFS= read -r _kv_line || [ -n "$_kv_line" ]; do
        case $_kv_line in
            "$_kv_key="*) _kv_val=${_kv_line#"$_kv_key="} ;;
        esac
    done <"$_kv_file"
    _kv_val=${_kv_val%\"}
    _kv_val=${_kv_val#\"}
    printf '%s' "$_kv_val"
}

# Replace (or add) KEY=value lines in a key=value file, atomically (tmp file + rename + sync).
# Usage: kv_set FILE KEY VALUE [KEY VALUE]...
kv_set() {
    _kvs_file=$1
    shift
    _kvs_tmp=$_kvs_file.tmp.$$
    {
        if [ -r "$_kvs_file" ]; then
            while IFS= read -r _kvs_line || [ -n "$_kvs_line" ]; do
                _kvs_keep=1
                _kvs_i=1
                while [ "$_kvs_i" -lt "$#" ]; do
                    eval "_kvs_k=\${$_kvs_i}"
                    # shellcheck disable=SC2154  # assigned by the eval above
                    case $_kvs_line in "$_kvs_k="*) _kvs_keep=0 ;; esac
                    _kvs_i=$((_kvs_i + 2))
                done
                [ "$_kvs_keep" = 1 ] && printf '%s\n' "$_kvs_line"
            done <"$_kvs_file"
        fi
        while [ "$#" -ge 2 ]; do
            printf '%s=%s\n' "$1" "$2"
            shift 2
        done
    } >"$_kvs_tmp" || { rm -f "$_kvs_tmp"; return 1; }
    sync "$_kvs_tmp" 2>/dev/null
    mv -f "$_kvs_tmp" "$_kvs_file" || { rm -f "$_kvs_tmp"; return 1; }
    sync "$_kvs_file" 2>/dev/null
    return 0
}

# Read KEY=value lines of a lab config file into the environment, only for the given keys.
# Usage: load_conf FILE KEY...
load_conf() {
    _lc_file=$1
    shift
    [ -r "$_lc_file" ] || return 0
    for _lc_key in "$@"; do
        _lc_val=$(kv_get "$_lc_file" "$_lc_key")
        [ -n "$_lc_val" ] && eval "$_lc_key=\$_lc_val"
    done
    return 0
}

# "major:minor" of the filesystem mounted at $1 (last mount on that path wins).
mount_majmin() {
    # mountinfo: id parent major:minor root mountpoint ...
    awk -v mp="$1" '$5 == mp { dev = $3 } END { if (dev != "") print dev }' /proc/self/mountinfo
}

# "major:minor" of a block device node (symlinks followed).
node_majmin() {
    _nm=$(stat -L -c '%t %T' "$1" 2>/dev/null) || return 1
    printf '%d:%d\n' "0x${_nm% *}" "0x${_nm#* }"
}

# Label (resin-rootA / resin-rootB) of the root partition mounted at $1, or fail.
root_label_of_mount() {
    _rl_dev=$(mount_majmin "$1")
    [ -n "$_rl_dev" ] || return 1
    for _rl_label in $OSFLEET_ROOT_LABELS; do
        if [ "$(node_majmin "/dev/disk/by-partlabel/$_rl_label")" = "$_rl_dev" ]; then
            printf '%s\n' "$_rl_label"
            return 0
        fi
    done
    return 1
}

# Partition index (hex, like u-boot's resin_root_part) of a partition label.
part_index_hex() {
    _pi_node=$(readlink -f "/dev/disk/by-partlabel/$1") || return 1
    _pi_name=${_pi_node##*/}
    if [ -r "/sys/class/block/$_pi_name/partition" ]; then
        _pi_idx=$(cat "/sys/class/block/$_pi_name/partition")
    else
        _pi_idx=${_pi_name##*[!0-9]}
    fi
    [ -n "$_pi_idx" ] || return 1
    printf '%x\n' "$_pi_idx"
}

# The other root label.
other_root_label() {
    case $1 in
        resin-rootA) echo resin-rootB ;;
        resin-rootB) echo resin-rootA ;;
        *) return 1 ;;
    esac
}

# True on a hostapp (balenaOS) device: / is the overlay of the hostapp's layers, and the booted
# partition itself is mounted at /mnt/sysroot/active (on an ab-profile device / is that partition).
hostapp_root() {
    [ "$(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts)" = overlay ]
}

# Label of the booted root partition: the device of / (ab profile) or of /mnt/sysroot/active
# (hostapp devices, like rollback-parse-bootloader), compared through device numbers.
booted_root_label() {
    if hostapp_root; then
        root_label_of_mount /mnt/sysroot/active
    else
        root_label_of_mount /
    fi
}

# Hex index of the booted root partition.
booted_root_index() {
    _br_label=$(booted_root_label) || return 1
    part_index_hex "$_br_label"
}

# The os-release of the OS on the inactive partition: its /etc/os-release (ab profile), else the
# one in its hostapp's layers (rollback-check-version: find /mnt/sysroot/inactive | grep etc/os-release).
inactive_os_release() {
    if [ -f /mnt/sysroot/inactive/etc/os-release ]; then
        echo /mnt/sysroot/inactive/etc/os-release
        return 0
    fi
    find /mnt/sysroot/inactive/balena/overlay2 -path '*/diff/etc/os-release' 2>/dev/null | head -n 1
}

# Normalised hex (lower case, no leading zeros) for comparisons of resin_root_part values.
hex_norm() {
    case $1 in
        '' | *[!0-9a-fA-F]*) return 1 ;;
    esac
    printf '%x\n' "0x$1"
}

# version_gt A B: true when A > B (sort -V).
version_gt() {
    [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1)" = "$1" ]
}

# Version of the OS whose /etc/os-release is $1 (META_BALENA_VERSION, else VERSION).
os_release_version() {
    _orv=$(kv_get "$1" META_BALENA_VERSION)
    [ -n "$_orv" ] || _orv=$(kv_get "$1" VERSION)
    printf '%s' "$_orv"
}

# Atomically write a small state file.
write_state() {
    printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}
