# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The update method of one device: standard (``balenahup``), advanced (``takeover``) or refused.

balena's own rules (balena-hup-action-utils 7 ``getHUPActionType``, facts sheet §3), in its order,
with its version semantics (:mod:`balena_semver`), then osfleet's own reasons for the advanced
update (the catalog's partition layouts or the architecture differ). :func:`choose_method` returns
the rule that decided, with a reason naming the versions, layouts or architectures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ansible_collections.osfleet.hup.plugins.plugin_utils import balena_semver as bsemver

METHOD_STANDARD = "balenahup"
METHOD_TAKEOVER = "takeover"

#: balena-hup-action-utils ``actions.balenahup``: the oldest running version and the oldest target
MIN_SOURCE_VERSION = "2.14.0+rev1"
MIN_TARGET_VERSION = "2.16.0+rev1"

#: Device types whose partition layout changes at a version (HAU ``minTakeoverVersion``); the
#: catalog's ``device_types.<type>.min_takeover_version`` adds to or overrides this table.
DEFAULT_MIN_TAKEOVER_VERSIONS: Mapping[str, str] = {
    "jetson-xavier": "6.0.50",
    "jetson-xavier-nx-devkit": "6.0.50+rev1",
    "jetson-xavier-nx-devkit-emmc": "6.0.39",
}

# Rule ids. Refusals (balena's order):
RULE_INVALID_VERSION = "invalid-version"
RULE_DEV_PROD = "dev-prod-switch"
RULE_DOWNGRADE = "downgrade"
RULE_SAME_VERSION = "same-version"
RULE_MIN_SOURCE = "min-source-version"
RULE_MIN_TARGET = "min-target-version"
REFUSAL_RULES = (RULE_INVALID_VERSION, RULE_DEV_PROD, RULE_DOWNGRADE, RULE_SAME_VERSION, RULE_MIN_SOURCE, RULE_MIN_TARGET)
# The advanced update (osfleet's layout and architecture, then balena's takeover version), or none:
RULE_LAYOUT = "partition-layout"
RULE_ARCH = "architecture"
RULE_TAKEOVER_VERSION = "takeover-version"
TAKEOVER_RULES = (RULE_LAYOUT, RULE_ARCH, RULE_TAKEOVER_VERSION)
RULE_STANDARD = "standard"

_VARIANT_SUFFIX = re.compile(r"\.dev\Z|\.prod\Z")


@dataclass(frozen=True)
class MethodChoice:
    """The decision for one device: ``method`` (``balenahup``, ``takeover``, or None: refused).

    ``rule`` decided and ``reason`` says why. ``needs`` is the method the update needs by the
    advanced-update rules, also when it is refused (None when a version does not parse), so that
    a refused update's report still shows it.
    """

    needs: str | None
    rule: str
    reason: str
    refused: bool = False

    @property
    def method(self) -> str | None:
        """The method to update with; None when refused."""
        return None if self.refused else self.needs

    def as_dict(self) -> dict[str, Any]:
        """The choice as plain data (the filter's value)."""
        return {"method": self.method, **asdict(self)}


def _refusal(current: str, target: str, variants: tuple[str | None, str | None], allow_downgrade: bool) -> tuple[str, str] | None:
    """balena's refusals after parsing, in its order: (rule, reason), or None."""
    # only dev-ness counts, and only when the target carries a marker
    if variants[1] is not None and (variants[0] == "dev") != (variants[1] == "dev"):
        return RULE_DEV_PROD, f"cannot switch between development and production: running {current}, target {target}"
    if bsemver.lt(target, current) and not allow_downgrade:
        return RULE_DOWNGRADE, f"target {target} is older than the running {current} (downgrades are not allowed)"
    if bsemver.compare(current, target) == 0:
        return RULE_SAME_VERSION, f"the running {current} is the same version as the target {target}"
    if bsemver.lt(current, MIN_SOURCE_VERSION):
        return RULE_MIN_SOURCE, f"the running {current} is older than {MIN_SOURCE_VERSION}, the oldest version this update supports"
    if bsemver.lt(target, MIN_TARGET_VERSION):
        return RULE_MIN_TARGET, f"target {target} is older than {MIN_TARGET_VERSION}, the oldest target this update supports"
    return None


def takeover_version_between(current: str, target: str, cutover: str) -> bool:
    """balena's takeover rule: ``current`` (``.dev``/``.prod`` suffix stripped) < ``cutover`` <= ``target``."""
    return bsemver.lt(_VARIANT_SUFFIX.sub("", current, count=1), cutover) and bsemver.gte(target, cutover)


def _needed_method(device_type: str, current: str, target: str, cutover: str | None,
                   layouts: tuple[str | None, str | None], archs: tuple[str | None, str | None]) -> MethodChoice:
    if layouts[0] and layouts[1] and layouts[0] != layouts[1]:
        return MethodChoice(METHOD_TAKEOVER, RULE_LAYOUT, f"the partition layout changes from {layouts[0]} to {layouts[1]}")
    if archs[0] and archs[1] and archs[0] != archs[1]:
        return MethodChoice(METHOD_TAKEOVER, RULE_ARCH, f"the architecture changes from {archs[0]} to {archs[1]}")
    if cutover is not None and takeover_version_between(current, target, cutover):
        return MethodChoice(
            METHOD_TAKEOVER, RULE_TAKEOVER_VERSION,
            f"{device_type} changes its partition layout at {cutover}, between {current} and {target}",
        )
    why = [f"{device_type} has no takeover version" if cutover is None else f"{device_type}'s takeover version {cutover} is not between them"]
    if layouts[0] and layouts[0] == layouts[1]:
        why.append(f"the partition layout stays {layouts[0]}")
    if archs[0] and archs[0] == archs[1]:
        why.append(f"the architecture stays {archs[0]}")
    return MethodChoice(METHOD_STANDARD, RULE_STANDARD, f"the standard update works from {current} to {target}: " + ", ".join(why))


def choose_method(
    device_type: str,
    current: Any,
    target: Any,
    *,
    min_takeover_version: str | None = None,
    current_layout: str | None = None,
    target_layout: str | None = None,
    current_arch: str | None = None,
    target_arch: str | None = None,
    allow_downgrade: bool = False,
) -> MethodChoice:
    """The method that updates ``device_type`` from ``current`` to ``target``, or the refusal.

    ``min_takeover_version`` (the catalog's) overrides :data:`DEFAULT_MIN_TAKEOVER_VERSIONS`;
    layouts and architectures count only when both are known. ``allow_downgrade`` (osfleet's
    option, not balena's) lifts the downgrade refusal only.
    """
    variants = []
    for which, version in (("running", current), ("target", target)):
        parsed = bsemver.parse(version)
        if parsed is None:
            return MethodChoice(None, RULE_INVALID_VERSION, f"the {which} version {version!r} is not a balenaOS version", refused=True)
        variants.append(parsed.variant)
    cutover = min_takeover_version if min_takeover_version is not None else DEFAULT_MIN_TAKEOVER_VERSIONS.get(device_type)
    needed = _needed_method(device_type, current, target, cutover, (current_layout, target_layout), (current_arch, target_arch))
    refusal = _refusal(current, target, (variants[0], variants[1]), allow_downgrade)
    if refusal is None:
        return needed
    return MethodChoice(needed.needs, refusal[0], refusal[1], refused=True)
