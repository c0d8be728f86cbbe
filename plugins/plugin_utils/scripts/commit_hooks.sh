#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# The running OS's commit hooks on a balenaOS device (plugin_utils/hooks.py run_commit_hooks):
# commit there is rollback-stop and then `hostapp-update-hooks-v2 --commit` (hostapp-facts §5;
# `hostapp-update-hooks` where there is no v2); the commit hooks do the work that only a committed
# OS may do (secure-boot dbx/TPM, removing the legacy supervisor database). The runner goes on after
# a failing commit hook and exits 0: the hooks that failed are named in its output. Prints
# {ran, tool, rc, failed (the hooks that failed), log (its last lines)}.

if command -v hostapp-update-hooks-v2 >/dev/null 2>&1; then
  tool=hostapp-update-hooks-v2
elif command -v hostapp-update-hooks >/dev/null 2>&1; then
  tool=hostapp-update-hooks
else
  jq -n '{ran: false, tool: null, rc: null, failed: [], log: ""}'
  exit 0
fi
out=$(DURING_UPDATE=0 "$tool" --commit 2>&1)
rc=$?
jq -n --arg tool "$tool" --argjson rc "$rc" --arg log "$(printf '%s\n' "$out" | tail -n 20 | head -c 4000)" \
  '{ran: true, tool: $tool, rc: $rc, log: $log,
    failed: [$log | split("\n")[] | capture("commit hook (?<h>\\S+) failed") | .h]}'
