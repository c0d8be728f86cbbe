#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rehearsal
short_description: Run one rehearsal drill of a release pair on a bench device, or write the rehearsal's evidence
version_added: 0.1.0
description:
  - The device side of the playbook C(osfleet.hup.rehearse) (role C(osfleet.hup.rehearse)), which calls it once per drill
    and once for the evidence, on each rehearsal device.
  - O(phase=drill) runs the drill O(drill) on the task's device. It brings the device to O(from_version) first (the
    operator's C(reflash) command of O(commands), or the standard update with C(hup_allow_downgrade)), puts user data
    on C(/mnt/data), then updates it to O(to_version) with the playbook C(osfleet.hup.update) run as a child process
    (C(--limit) the device, the inventory O(inventory)), interrupting it as the drill says, and judges what the device
    runs afterwards. V(update), the update and a second run with no change; V(health), the device's health check made
    to fail (its C(health_fault) command) and the update rolled back; V(boot), the new root made unbootable (its
    C(boot_fault) command) and the bootloader falling back; V(power_write) and V(power_bootfiles), the power cut (its
    C(power_cut) and C(power_on) commands) while the new root or the boot files are written, the device booting with its
    data intact and a rerun completing; V(controller_killed), the child controller killed while the new root is written
    and a rerun completing; V(link_cut), the link cut (its C(link_down) and C(link_up) commands) for
    O(link_down_seconds) while the new root is written, and the update (or a rerun) completing; V(advanced_staged), the
    advanced update (takeover) interrupted while it stages the disk image in RAM, before the disk write (the controller
    killed, and the power cut when the device has the commands), the device running the old version with its data
    intact, and a rerun completing (V(not_run) for a pair the standard update updates, as O(catalog) says or else a
    check-mode run finds; the takeover needs C(hup_allow_data_loss) in O(update_vars)).
  - A drill whose commands the device lacks is V(not_run), with the reason, and touches nothing. In check mode no
    drill runs (each is V(not_run)).
  - O(phase=evidence) writes the rehearsal's evidence record (JSON, Markdown, HTML) into O(dir) from the drills' results
    (O(results), of every bench device of the device type; one record per rehearsal, device type and pair) with the pair
    (device type, O(from_version), O(to_version), the catalog digest of the target release), the bench devices, the
    method, the image digests, the collection's version and the run logs the drills pulled from the devices. The
    rollout's gate (C(hup_require_rehearsal)) reads these records.
author:
  - osfleet maintainers (@osfleet)
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
attributes:
  check_mode:
    support: partial
    details:
      - O(phase=drill) runs no drill (V(not_run)); O(phase=evidence) writes nothing and returns the record it would write.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Each drill updates (and interrupts) the device again.
  platform:
    details:
      - A balenaOS or plain A/B device reached over SSH (no Python on it); the update runs and the commands run on the
        controller.
options:
  phase:
    description: V(drill) runs one drill, V(evidence) writes the evidence record.
    type: str
    required: true
    choices: [drill, evidence]
  drill:
    description: The drill (O(phase=drill)).
    type: str
    choices: [update, health, boot, power_write, power_bootfiles, controller_killed, link_cut, advanced_staged]
  from_version:
    description: The version the fleet runs (the pair's first version); every drill starts from it.
    type: str
    required: true
  to_version:
    description: The target version (the pair's second).
    type: str
    required: true
  run_id:
    description:
      - The rehearsal's id (letters, digits, C(.), C(_), C(-)). Each update run of drill D is C(<run_id>-<D>-<n>) (its run
        log on the device is named after it); the evidence record is named after it.
    type: str
    required: true
  inventory:
    description: The inventory sources of the update runs (the rehearsal's own, C(ansible_inventory_sources)).
    type: list
    elements: str
    default: []
  commands:
    description:
      - The device's commands, run on the controller with C(sh -c), with the device's inventory name in
        E(HUP_REHEARSAL_DEVICE) and the version at stake in E(HUP_REHEARSAL_VERSION). Keys C(reflash) (write the
        version E(HUP_REHEARSAL_VERSION) onto the device and boot it), C(power_cut), C(power_on) (and wait until it
        answers), C(health_fault) (make the health check of the next OS the device boots fail), C(boot_fault) (make
        the next OS it boots unbootable), C(fault_clear), C(link_down) and C(link_up).
    type: dict
    default: {}
  update_vars:
    description:
      - Variables given to every update run (C(-e)), for example C(hup_health_device_timeout) or C(hup_catalog).
      - The runs get C(hup_retry_rolled_back=true) unless this says otherwise (the drills roll the target back on purpose).
    type: dict
    default: {}
  work_dir:
    description:
      - Where on the controller the update runs' output goes (C(<work_dir>/<device>/<drill>/)), and what is known of a
        device that stopped answering (C(<work_dir>/<device>/down.json), see O(settle_timeout)).
    type: path
    default: osfleet-hup-rehearsal
  log_dir:
    description: The run logs' directory on the device (the standard role's C(hup_log_dir)).
    type: str
    default: /mnt/data/balenahup
  data_path:
    description: The file of user data the drill puts on the device and checks afterwards.
    type: str
    default: /mnt/data/osfleet-rehearsal.data
  timeout:
    description: Seconds each update run may take before it is killed.
    type: int
    default: 1800
  settle_timeout:
    description:
      - Seconds the device has to answer again after an interruption or a reflash.
      - A device that did not answer in that time (or whose C(power_on) command failed) is known not to answer for the
        rest of the rehearsal (O(run_id)), noted in O(work_dir); its next drills do not wait for it again. They reflash it
        at once when it has a C(reflash) command, else try it once and fail at once, naming the device, the drill and why.
    type: int
    default: 600
  link_down_seconds:
    description: How long the link stays cut (O(drill=link_cut)).
    type: int
    default: 20
  results:
    description:
      - The drills' results (O(phase=evidence)) of every bench device of the device type, the registered results of
        O(phase=drill) (their C(drill), C(device), C(method), C(logs)), each with C(device_name), the bench device it came
        from. A result of a task that failed (also one whose arguments could not be templated) or whose device did not
        answer is a failed drill, its message the reason.
    type: list
    elements: dict
    default: []
  assigned:
    description:
      - Bench device -> the drills it was given (O(phase=evidence); the filter P(osfleet.hup.hup_rehearsal_drills#filter)
        decides). An assigned drill without a result is a failed drill of the record (its device failed or went away).
    type: dict
    default: {}
  dir:
    description: The evidence directory (O(phase=evidence)). Empty, C($XDG_STATE_HOME/osfleet-hup/rehearsals), where the rollout looks.
    type: str
    default: ""
  catalog:
    description:
      - The release catalog. O(phase=evidence), for the catalog digest of the target release and the image digests.
      - O(phase=drill), with O(device_type), for the pair's method before the drill touches the device (the two releases'
        partition layouts and architectures, the device type's takeover version). A pair the advanced update (takeover)
        updates runs no drill of the standard update (V(health), V(boot), V(power_write), V(power_bootfiles),
        V(controller_killed), V(link_cut) are each V(not_run), saying why), a pair of the standard update no
        V(advanced_staged).
    type: str
  device_type:
    description:
      - The device's type (O(phase=drill)), for the pair's method in O(catalog).
      - O(phase=evidence), the pair's device type when no result in O(results) names it (every drill's task failed).
    type: str
  catalog_sha256:
    description: The sha256 the catalog's bytes must have.
    type: str
  catalog_allow_http:
    description: Accept a catalog over plain HTTP without O(catalog_sha256).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Run the drill health
  osfleet.hup.rehearsal:
    phase: drill
    drill: health
    from_version: 2.88.4
    to_version: 2.113.0
    run_id: rehearsal-20261207
    inventory: "{{ ansible_inventory_sources }}"
    commands: "{{ hup_rehearsal_commands }}"
  register: drill
"""

RETURN = r"""
drill:
  description: The drill's result (O(phase=drill)), C(name), C(device), C(outcome) (V(passed), V(failed), V(not_run)), C(reason), C(duration)
    (seconds), C(proves) and C(details) (the runs' exit codes, changed counts, what the device ran after the interruption).
  returned: phase drill
  type: dict
  sample: {"name": "health", "outcome": "passed", "reason": "", "duration": 95.1, "proves": "a health failure after the switch is rolled back"}
device:
  description: The device's facts before the drill (O(phase=drill); empty when it did not run).
  returned: phase drill
  type: dict
method:
  description: The update's method as the update runs printed it (O(phase=drill)), or empty.
  returned: phase drill
  type: str
logs:
  description: The run logs of the drill's update runs, pulled from the device (name -> text; O(phase=drill)).
  returned: phase drill
  type: dict
record:
  description: The evidence record (O(phase=evidence)), C(pair), C(devices) (the bench devices; each drill names its C(device)),
    C(method), C(image_digests), C(collection_version), C(run_id), C(status), C(reason), C(drills), C(logs) and the times.
  returned: phase evidence
  type: dict
paths:
  description: The files written (O(phase=evidence)), C(json), C(md), C(html); empty in check mode.
  returned: phase evidence
  type: dict
passed:
  description: Whether the record passed (O(phase=evidence)).
  returned: phase evidence
  type: bool
actions:
  description: What the phase did, one sentence each.
  returned: always
  type: list
  elements: str
"""
