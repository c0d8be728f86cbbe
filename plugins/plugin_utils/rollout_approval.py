# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The approvals of a canary rollout's gated waves (``approval: true``; ``-e hup_rollout_approve=<wave>``):
which waves an approval may name, and where approvals.json keeps a rollout's and a revert's
approvals apart. The gate itself, a wave that waits for its approval, is :func:`.rollout.decide_slot`.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout import RolloutError


def check_approval(plan: Mapping[str, t.Any], wave: str | None) -> None:
    """Refuse an approval (``hup_rollout_approve``) of a wave ``plan`` has not, or of one that
    needs none (no ``approval: true``: the approval would mean nothing, and an operator who gives
    one believes the wave gated): the one rule of the start, for a real run, ``--check`` and the
    plan (``hup_rollout_action=plan``) alike, before anything is shown or written."""
    if not wave:
        return
    names = [w["name"] for w in plan["waves"]]
    if wave not in names:
        raise RolloutError(f"hup_rollout_approve: no wave {wave!r} in the plan of rollout {plan['id']} (its waves: {', '.join(names)}): "
                           "nothing approved, nothing written")
    gated = [w["name"] for w in plan["waves"] if w.get("approval")]
    if wave not in gated:
        which = f"the waves that wait for one: {', '.join(gated)}" if gated else "no wave of its plan waits for one"
        raise RolloutError(f"hup_rollout_approve: wave {wave!r} of rollout {plan['id']} needs no approval (it does not set approval: true; "
                           f"{which}): nothing approved, nothing written")


def approval_key(wave: str, action: str) -> str:
    """Where approvals.json keeps the approval of ``wave``: a revert's waves are approved apart."""
    return f"revert:{wave}" if action == "revert" else wave


def wave_of_approval(key: str, revert: bool) -> str | None:
    """The wave an approvals.json key approves, for a revert run or the rollout's; None when the key
    is the other's."""
    if key.startswith("revert:"):
        return key[len("revert:"):] if revert else None
    return None if revert else key
