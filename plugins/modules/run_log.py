#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_log
short_description: End the run log of an update on a balenaOS-style device, rotate old logs, keep a copy on the controller
version_added: 0.1.0
description:
  - Appends the outcome line of an update run (O(outcome), O(msg), O(failed_step)) to the run log O(run_log) that
    the run's steps wrote on the device, one JSON line like theirs (C(step) is V(outcome)).
  - A run whose steps wrote nothing (a device that already ran the target) has no log, and none is created.
  - Then removes the oldest run logs (C(osfleet-hup.<run id>.log)) of the log's directory so that the newest
    O(keep) remain, the current run's always among them; other files there are never touched.
  - With O(copy_to), the controller keeps a copy of the device's log of the run in C(<copy_to>/<inventory_hostname>/),
    so that a device that is gone later still has its story.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
attributes:
  check_mode:
    support: full
    details:
      - Check mode writes, removes and copies nothing (check mode writes no run log) and says what a real run would do;
        it reports the change of the real run, whose steps have written the log by then.
  diff_mode:
    support: partial
    details:
      - In check mode the diff shows the outcome line that would be appended.
  idempotent:
    support: none
    details:
      - Each call appends one outcome line to an existing run log.
options:
  outcome:
    description:
      - How the run ended on this device. V(refused) is a device the run stopped before any change (its preflight
        failed, or it needs an update method it was not allowed).
    type: str
    choices: [committed, rolled_back, failed, interrupted, refused, unchanged]
    required: true
  msg:
    description:
      - What happened, in words (the run's final message for the device).
    type: str
    default: ""
  failed_step:
    description:
      - The step at which the run failed.
    type: str
  keep:
    description:
      - How many run logs the log directory keeps (the newest, by modification time).
    type: int
    default: 10
  copy_to:
    description:
      - A directory on the controller for copies of the device's log of the run, one subdirectory per device
        (C(inventory_hostname)). A relative path is taken from the directory C(ansible-playbook) runs in.
      - Unset or empty, no copy is kept.
    type: str
notes:
  - O(run_log) is the log to end; without it the module does nothing.
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.device_info
"""

EXAMPLES = r"""
- name: End the run log with the outcome and keep a copy next to the playbook's output
  osfleet.hup.run_log:
    run_log: /mnt/data/balenahup/osfleet-hup.20261202T101500Z-1a2b.log
    outcome: committed
    msg: 2.88.4 -> 2.113.0 committed
    keep: 10
    copy_to: osfleet-hup-logs
"""

RETURN = r"""
exists:
  description: Whether the device has a log of this run (else nothing was appended, rotated or copied).
  returned: success
  type: bool
  sample: true
entry:
  description: The outcome line as appended.
  returned: success
  type: dict
  sample: {"step": "outcome", "outcome": "committed", "failed": false, "msg": "2.88.4 -> 2.113.0 committed"}
removed:
  description: The old run logs removed from the log directory (in check mode, the ones that would be).
  returned: success
  type: list
  elements: str
  sample: ["osfleet-hup.20261101T080000Z-0a0b.log"]
copied_to:
  description: The controller's copy of the device's log of the run (null when none is kept).
  returned: success
  type: str
  sample: /home/ops/fleet/osfleet-hup-logs/device-01/osfleet-hup.20261202T101500Z-1a2b.log
lines:
  description: How many lines the device's log of the run holds, the outcome line included.
  returned: success
  type: int
  sample: 14
actions:
  description: What the module did (or would do in check mode), in words.
  returned: always
  type: list
  elements: str
  sample: ["appended the outcome (committed)", "removed 2 old run log(s)", "kept a copy in osfleet-hup-logs/device-01/"]
"""
