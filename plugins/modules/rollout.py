#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rollout
short_description: Drive a canary rollout's state on the controller (plan, waves, device records, verdicts)
version_added: 0.1.0
description:
  - The controller side of the playbook C(osfleet.hup.rollout) (and its role C(osfleet.hup.rollout)), which calls it in
    each of its plays; no device is involved. It keeps a rollout's state in a directory on the controller (O(dir)), the
    frozen plan (which device is in which wave, the waves' limits, the digest of the spec), one record per device,
    the waves' verdicts, the approvals and the lock of the run that drives the rollout. Every file is written
    atomically.
  - O(phase=start) plans the rollout, or checks that the frozen plan still stands for the spec (O(target_version), O(waves),
    O(fleet)); a changed spec is refused until O(action=replan). It takes the rollout's lock (a second run is refused
    while the first one lives; the lock of a run that ended without releasing it is taken over; the lock of a run on
    another controller, which this one cannot see, holds until it is older than O(lock_stale_after) without a refresh or
    is released; a start that fails releases the lock it took), records an approval
    (O(approve)) and carries out O(action=abort), O(action=resume) (a halted wave goes on, its failures so far accepted) and
    O(action=retry_failed) (a halted wave goes on and its failed devices are tried again). An O(approve) of a wave the
    plan has not is refused before anything is written or shown, in check mode and for O(action=plan) as in a real run.
  - O(phase=slot) says what the run does with wave O(index) (an update of its devices that are not done, the re-check of
    its committed devices when its bake time is over, nothing when it is done) or why the run stops there (a bake
    that has not ended, an approval not given, a halt, a pause).
  - O(phase=record) writes the record of one device (O(host)), O(phase=batch) tells a batch of a wave whether the wave
    halted meanwhile (its devices then end untouched), O(phase=judge) gives the wave's verdict and O(phase=finish) ends
    the run (the lock released) with the summary of every wave.
  - O(action=revert) takes the devices the rollout committed back to the release each ran before, in the frozen waves with
    their limits and gates (a wave's approval is given apart for its revert). O(phase=revert) decides it for one device
    (O(host)) from its record and its probe (O(device)); it switches back (its other root partition still verifiably holds the
    old release, by its hostapp image id on a balenaOS device, its release stamp on a plain A/B one), commits (it booted the old
    release), is done, or refuses (the partition was rewritten meanwhile, or the device runs another release). A refused
    device is recorded so with the reason and nothing on it changes; it does not count as a failure of its wave, but the
    revert then ends V(incomplete) and the run fails naming it. The revert's records go into each device record's key
    C(revert) and its state into C(state.json)'s key C(revert); the update's stay as they were. Rerunning it skips the
    reverted and refused devices and tries its failed ones again.
  - In check mode (and with O(action=plan)) nothing is written; the plan is computed as O(phase=start) would freeze it.
    In check mode with O(action=revert), the plan says what the revert would do on each device.
author:
  - osfleet maintainers (@osfleet)
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.controller_module
attributes:
  check_mode:
    support: full
    details:
      - Nothing is written (no plan frozen, no record, no lock); what would be written is returned.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - O(phase=start) freezes the plan once; O(phase=record) writes the device's record again only when it changes.
options:
  phase:
    description: What to do (see the description).
    type: str
    required: true
    choices: [start, slot, batch, record, judge, finish, revert]
  rollout_id:
    description: The rollout's name, a file name (letters, digits, C(.), C(_), C(-)).
    type: str
    required: true
  dir:
    description:
      - The rollout's state directory. Unset, C($XDG_STATE_HOME/osfleet-hup/rollouts/<rollout_id>) (C(~/.local/state/...)
        when E(XDG_STATE_HOME) is unset).
    type: path
  action:
    description:
      - What the operator asks for (the playbook's C(hup_rollout_action)). V(run) goes on until the next gate; V(plan)
        only shows the plan; V(resume) and V(retry_failed) go on after a halt; V(abort) ends the rollout; V(replan) freezes a
        new plan from a changed spec (the devices' records stay); V(revert) takes the committed devices back to the
        release each ran before (see the description).
    type: str
    default: run
    choices: [run, plan, resume, retry_failed, abort, replan, revert]
  target_version:
    description: The release the rollout brings the devices to (O(phase=start)).
    type: str
  waves:
    description:
      - The waves as the operator declares them (C(hup_waves)), with O(phase=start). Each is a mapping with C(name), C(hosts)
        (an inventory pattern) or C(percent) (of the devices not in an earlier wave), C(max_failures) (a count or C("N%"),
        default 0), C(min_devices) (a percentage limit is judged once this many devices are done, default 1), C(bake) (a
        duration, C(30m)), C(approval) (a boolean), C(max_concurrent) (a count or C("N%")) and C(max_deferred) (a count or
        C("N%"), default 0).
    type: list
    elements: raw
  fleet:
    description: Every device the rollout is about (O(phase=start)); the plan is frozen from it, not from the play's hosts.
    type: list
    elements: str
  pattern_hosts:
    description: For each wave given by C(hosts), the devices its pattern names (O(phase=start)).
    type: dict
  approve:
    description:
      - A wave to approve (O(phase=start)), recorded with who, when, O(remark) and the plan's digest.
      - A wave the plan has not, or one that needs no approval (it does not set C(approval=true)), is refused, nothing written.
    type: str
  remark:
    description: The remark of the approval.
    type: str
  lock_stale_after:
    description:
      - Seconds after which the lock of a run on another controller (two controllers sharing O(dir), e.g. on NFS) is
        stale when it has not been refreshed (O(phase=start)); 0, never (it holds until it is released). A run refreshes
        its lock as it goes; a lock of this controller is judged by its process instead.
    type: int
    default: 43200
  index:
    description: The wave's slot (0 for the first wave), with O(phase=slot), O(phase=batch) and O(phase=judge).
    type: int
  mode:
    description: What the slot did (O(phase=judge)), V(update), V(revert) or V(bake_check).
    type: str
    choices: [update, revert, bake_check, skip, stop, plan]
  host:
    description: The device whose record is written (O(phase=record)), or whose revert is decided (O(phase=revert)).
    type: str
  device:
    description: What the device reports now (the C(device) of M(osfleet.hup.device_info)), with O(phase=revert).
    type: dict
  status:
    description:
      - The device's new status (O(phase=record)). With O(action=revert) it is the status of the device's revert, V(committed)
        meaning reverted and V(current) refused.
    type: str
    choices: [in_progress, committed, current, failed, deferred]
  planned:
    description:
      - For each device, what its update would do as the role's check mode found it (O(phase=finish) in check mode or with
        O(action=plan)), C(phase), C(method), C(rule), C(source), C(bytes), or C(error); printed per wave with the totals.
    type: dict
  rehearsal:
    description:
      - The rehearsal gate (O(phase=start); the playbook's C(hup_require_rehearsal)). C(require) is V(false), V(true), a
        maximum age (V(7d)) or a mapping with C(max_age) and C(drills) (drills that must have passed). C(devices) maps each
        device read before the start to its C(device_type) and C(version) (or C(error)). C(catalog) (with
        C(catalog_sha256), C(catalog_allow_http)) gives the target release's catalog digest, C(dir) the evidence
        directory (default C($XDG_STATE_HOME/osfleet-hup/rehearsals), where the playbook C(osfleet.hup.rehearse) writes).
      - Each (device type, version, target version, catalog digest) of a device that is not done needs a passing evidence
        record (the newest rehearsal of the pair passed, within C(max_age)); when one lacks it the start fails naming the
        pair and its devices, before anything is written. In check mode and with O(action=plan) the pairs are listed in
        RV(notes) with their evidence, and nothing is refused. O(action=abort) is never refused. Once a wave started,
        evidence that grew older than C(max_age) meanwhile does not stop the rollout; a missing or a failed one does.
      - A run that required evidence and started keeps the gate it passed (each pair with the record it relied on) in
        C(rehearsal.json) of the rollout's directory.
    type: dict
  facts:
    description:
      - What the record keeps besides its status (O(phase=record)), for example C(wave), C(from_version), C(to_version),
        C(device_type), C(method), C(reason), C(boot_id), C(run_id), and for a revert C(from_root), C(from_image_id),
        C(from_digest) (what identifies the release the device ran before).
      - C(os_version) is the version the device was just seen running; the record then also gets C(observed_at) (now), which
        the fleet inventory C(osfleet.hup.fleet) reads (its option C(os_version_from)).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Plan the rollout (or check the frozen plan) and take its lock
  osfleet.hup.rollout:
    phase: start
    rollout_id: 2026-12-fleet
    target_version: 2.113.0
    waves:
      - {name: canary, hosts: ring_canary, max_failures: 0}
      - {name: broad, percent: 100, max_failures: "2%", max_concurrent: 50}
    fleet: "{{ query('ansible.builtin.inventory_hostnames', 'all:!localhost') }}"
    pattern_hosts:
      canary: "{{ query('ansible.builtin.inventory_hostnames', 'ring_canary') }}"
  register: hup_rollout
"""

RETURN = r"""
plan:
  description: The frozen plan (O(phase=start)), or the plan O(phase=start) would freeze (check mode, V(plan)).
  returned: phase start, finish
  type: dict
  contains:
    schema:
      description: The version of the plan's format (1).
      type: int
    id:
      description: The rollout's id.
      type: str
    target_version:
      description: The release the rollout brings the devices to.
      type: str
    digest:
      description: The digest of the spec the plan stands for.
      type: str
    created:
      description: When the plan was frozen (UTC, ISO 8601).
      type: str
    created_by:
      description: Who froze it (the sudo user, or the login name).
      type: str
    fleet:
      description: Every device the plan is about.
      type: list
      elements: str
    waves:
      description: The waves, in order, each with its C(hosts), C(allowed_failures), C(limit) (V(halts at the 2nd failure)),
        C(serial) and the keys given.
      type: list
      elements: dict
    unplanned:
      description: Devices of the fleet that no wave takes.
      type: list
      elements: str
  sample: {"digest": "sha256:...", "waves": [{"name": "canary", "hosts": ["dev1"], "limit": "halts at the 1st failure"}]}
decision:
  description:
    - What the slot does (O(phase=slot)), C(mode) (V(update), V(revert), V(bake_check), V(plan), V(skip), V(stop)), C(wave), C(hosts),
      C(serial), C(gate) and C(reason); C(boot_ids) (per device, the boot its bake re-check expects) and C(versions) (a revert's
      bake re-check, per device the release it went back to).
  returned: phase slot
  type: dict
  sample: {"mode": "update", "wave": "canary", "hosts": ["dev1"], "serial": 1, "gate": null, "reason": "wave canary: 1 device(s) to update"}
halted:
  description: Whether the wave halted (O(phase=batch), O(phase=judge)).
  returned: phase batch, judge
  type: bool
verdict:
  description: The wave's verdict (O(phase=judge)), C(status) (V(running), V(passed), V(halted), V(inconclusive)), C(reason)
    and C(counts).
  returned: phase judge
  type: dict
record:
  description: The device's record as written (O(phase=record); O(phase=revert) when it refused the device), its revert in C(revert).
  returned: phase record, revert
  type: dict
revert:
  description:
    - What the revert does on the device (O(phase=revert)), C(action) (V(switch), V(commit), V(done), V(refuse)), C(reason) (naming
      the device and, when refused, what its other root partition holds), C(version) (the release it goes back to),
      C(from_version) (the rollout's target), C(image_id) and C(digest) (the identity of the old release the update recorded).
  returned: phase revert
  type: dict
  sample: {"action": "refuse", "version": "", "from_version": "2.113.0", "image_id": "sha256:ea8...", "digest": "",
           "reason": "dev3: not revertible: the other root partition resin-rootA was rewritten: its hostapp is image sha256:5d0...,
             not sha256:ea8... (2.88.4, as it ran before the update); nothing changed on it"}
summary:
  description:
    - Every wave with its devices' counts and its verdict (O(phase=finish)), and the rollout's status; C(revert) the same for
      its revert once one started (C(status) V(active), V(halted), V(reverted), V(incomplete), ...).
  returned: phase start, finish
  type: dict
stop:
  description: Why the run stops (a gate), or null when it went through every wave it could.
  returned: phase slot, judge, finish
  type: str
notes:
  description: What the phase noticed (a stale lock taken over, an approval recorded).
  returned: phase start, finish
  type: list
  elements: str
rehearsal:
  description:
    - The rehearsal gate (O(phase=start) with O(rehearsal)), C(required), C(ok), C(reason), C(unknown) (device -> why its pair
      is not known) and C(pairs) (each with C(pair), C(hosts), C(status) V(passed), V(missing), V(failed), V(stale) or
      V(incomplete), C(reason) and C(record)).
  returned: phase start, when O(rehearsal) requires evidence or names devices
  type: dict
  sample: {"required": true, "ok": false, "pairs": [{"pair": {"device_type": "genericx86-64-ext", "from_version": "2.88.4"}, "status": "missing"}]}
dir:
  description: The rollout's state directory.
  returned: phase start
  type: str
  sample: /root/.local/state/osfleet-hup/rollouts/2026-12-fleet
ok:
  description: False when the rollout halted, paused or was aborted (the playbook then fails the run).
  returned: phase finish
  type: bool
report:
  description: What the report callback gets through C(set_stats) (C(rollout), C(waves), C(devices)).
  returned: phase finish
  type: dict
report_dir:
  description: Where the report of this run goes (C(<dir>/report)); null in check mode.
  returned: phase finish
  type: str
actions:
  description: What the phase did (always empty; the records and the state are in the other keys).
  returned: always
  type: list
  elements: str
"""
