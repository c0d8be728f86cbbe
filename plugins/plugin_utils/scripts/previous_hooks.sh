#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# On a balenaOS (hostapp) device that booted the new OS (the health step's rollback,
# plugin_utils/hooks.py): the previous OS's hooks put its boot files and env back, the way
# rollback-health does it (run_hooks_from_inactive): the running OS's init mounts the old hostapp
# from /mnt/sysroot/inactive (read-only), its hooks run chrooted in it with DURING_UPDATE=1 and the
# device's /proc, /sys, /dev, /run, /tmp and /mnt mounts bound in, in a private mount namespace;
# the old hostapp is unmounted after. The hooks' output goes to stderr; the exit status is theirs.
# Also a revert's switch back to the previous OS (osfleet.hup.bootenv state=reverted): $1 "write"
# first writes rollback-health's variables, as hostapp-update does before it runs the hooks ("keep":
# the health step's rollback, after which rollback-stop's effects remove them).

variables=$1
A=/mnt/sysroot/active I=/mnt/sysroot/inactive
if [ "$variables" = write ]; then
  if [ -e /var/run/openvpn/vpn_status/active ]; then vpn=1; else vpn=0; fi
  if ! printf 'BALENAOS_ROLLBACK_VPNONLINE=%s\n' "$vpn" > /mnt/state/rollback-health-variables.tmp \
    || ! mv /mnt/state/rollback-health-variables.tmp /mnt/state/rollback-health-variables; then
    fail "cannot write /mnt/state/rollback-health-variables"
  fi
  sync
fi
command -v unshare >/dev/null 2>&1 || fail "the device has no unshare: cannot run the previous OS's hooks (its rollback-health can)"
init=$(osfleet_in_root "$A" current/boot/init) || fail "the running hostapp's init: $init"
if [ ! -f "$init" ] || [ ! -x "$init" ]; then fail "the running hostapp has no init at $init"; fi
old=$("$init" -sysroot "$I") || fail "cannot mount the previous OS from $I"
case $old in
  "$I"/balena/overlay2/*/merged) ;;
  *) fail "the previous OS was mounted at an unexpected place: $old" ;;
esac
rc=0
# shellcheck disable=SC2016 # the inner script's own variables
unshare -m --propagation private sh -c '
  r=$1
  for d in /proc /sys /dev /run /tmp /mnt/boot /mnt/state /mnt/data /mnt/sysroot/active /mnt/sysroot/inactive; do
    [ -d "$r$d" ] || { echo "the previous OS has no $d" >&2; exit 1; }
    case $d in /dev | /sys) o=rbind ;; *) o=bind ;; esac
    mount -o "$o" "$d" "$r$d" || { echo "cannot bind $d into the previous OS" >&2; exit 1; }
  done
  exec chroot "$r" /usr/bin/env DURING_UPDATE=1 /usr/bin/hostapp-update-hooks
' osfleet "$old" >&2 || rc=$?
umount "$old" 2>/dev/null || umount -l "$old" 2>/dev/null || echo "could not unmount $old" >&2
sync
exit "$rc"
