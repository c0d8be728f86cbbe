#!/bin/sh
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
#
# On a balenaOS (hostapp) device, after the step's own commit (rollback-stop's effects; the health
# step and bootenv state=committed, plugin_utils/hooks.py): the running OS's commit hooks, as
# rollback-health runs them after rollback-stop (hostapp-facts §5): hostapp-update-hooks-v2
# --commit, or hostapp-update-hooks --commit where there is no v2. The runner goes on after a
# failing commit hook; the controller reads which failed from its output. Prints one JSON object:
# {tool (null: the device has neither runner), rc, output (the runner's last lines)}.

if command -v hostapp-update-hooks-v2 >/dev/null 2>&1; then
  tool=hostapp-update-hooks-v2
elif command -v hostapp-update-hooks >/dev/null 2>&1; then
  tool=hostapp-update-hooks
else
  jq -n '{tool: null, rc: null, output: ""}'
  exit 0
fi
rc=0
out=$(DURING_UPDATE=0 "$tool" --commit 2>&1) || rc=$?
sync
jq -n --arg tool "$tool" --argjson rc "$rc" --arg output "$(printf '%s\n' "$out" | tail -n 40 | cut -c 1-300)" \
  '{tool: $tool, rc: $rc, output: $output}'
