# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Bootloader environment files: read from the probe, parse, render, and the A/B switch as pure
transforms.

Two formats (facts sheet §1.5, §6.4, §9.5):

* u-boot: ``resinOS_uEnv.txt`` (``resin_root_part`` as a HEX partition index, ``upgrade_available``),
  ``bootcount.env`` (``bootcount``; missing means 0) and the user-owned ``extra_uEnv.txt``
  (``os_bc_lim``, default 3). While armed, each boot increments the count; ``bootcount > os_bc_lim``
  boots the other root without changing the file.
* GRUB: a 1024-byte ``grubenv`` (``grub/grubenv`` or ``EFI/BOOT/grubenv``) holding
  ``resin_root_part`` (DECIMAL index), ``upgrade_available`` and ``bootcount``; the legacy GRUB
  config falls back on the second boot without a clear, i.e. a limit of 1 with the same rule.

File names are relative to the boot partition. :func:`env_files` and :func:`boot_state` are the
one reader of the env the device probe read.
"""

from __future__ import annotations

import dataclasses
import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError

if t.TYPE_CHECKING:
    from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState

FileContent = Union[str, bytes, None]

UBOOT = "uboot"
GRUB = "grub"
UBOOT_ENV_FILE = "resinOS_uEnv.txt"
BOOTCOUNT_FILE = "bootcount.env"
EXTRA_UENV_FILE = "extra_uEnv.txt"
GRUBENV_FILES = ("grub/grubenv", "EFI/BOOT/grubenv")
GRUBENV_HEADER = "# GRUB Environment Block\n"
GRUBENV_SIZE = 1024
DEFAULT_BOOTCOUNT_LIMIT = 3
GRUB_BOOTCOUNT_LIMIT = 1


# --- key=value formats -------------------------------------------------------------------------

def _parse_lines(lines: Iterable[str], what: str) -> dict[str, str]:
    """Parse ``key=value`` lines; blank lines and ``#`` lines (comments, grubenv padding) are skipped."""
    env: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what}: line {number} is not key=value: {stripped[:80]!r}")
        env[key] = value.strip()
    return env


def _ordered_lines(env: Mapping[str, str], base_keys: Iterable[str], what: str) -> str:
    """``key=value`` lines: keys of ``base_keys`` first in their order, then new keys."""
    order = [key for key in dict.fromkeys(base_keys) if key in env]
    order += [key for key in env if key not in order]
    lines = []
    for key in order:
        value = str(env[key])
        if not key or "=" in key or any(c in key + value for c in "\n\r\0") or key != key.strip():
            raise ValueError(f"{what}: cannot store {key!r}={value!r} (bad key or line break in value)")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def parse_uboot(text: str) -> dict[str, str]:
    """Parse a u-boot ``key=value`` env text (``#`` comments and blank lines ignored, last wins)."""
    return _parse_lines(text.splitlines(), "u-boot env")


def render_uboot(env: Mapping[str, str], base: str | None = None) -> str:
    """Render ``env`` one ``key=value`` per line, keeping the key order of ``base`` (new keys last)."""
    return _ordered_lines(env, parse_uboot(base) if base else (), "u-boot env")


def _grubenv_text(data: bytes | str) -> str:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if not text.startswith(GRUBENV_HEADER):
        raise ValueError(f"grubenv: missing header {GRUBENV_HEADER.strip()!r}")
    return text


def parse_grubenv(data: bytes | str) -> dict[str, str]:
    """Parse a GRUB environment block (header required, ``#`` padding ignored)."""
    text = _grubenv_text(data)
    return _parse_lines(text[len(GRUBENV_HEADER):].split("\n"), "grubenv")


def render_grubenv(env: Mapping[str, str], base: bytes | str | None = None) -> bytes:
    """Render a GRUB environment block padded with ``#`` to exactly 1024 bytes."""
    body = _ordered_lines(env, parse_grubenv(base) if base else (), "grubenv")
    data = (GRUBENV_HEADER + body).encode("utf-8")
    if len(data) > GRUBENV_SIZE:
        raise ValueError(f"grubenv: {len(data)} bytes of variables do not fit the {GRUBENV_SIZE}-byte block")
    return data + b"#" * (GRUBENV_SIZE - len(data))


# --- state -------------------------------------------------------------------------------------

def _flag(value: str | None, what: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"{what}: upgrade_available must be 0 or 1, got {value!r}")
    return value == "1"


def _int(value: str | None, base: int, what: str, key: str) -> int:
    if value is None or value == "":
        raise ValueError(f"{what}: {key} is missing")
    try:
        number = int(value, base)
    except ValueError:
        kind = "hexadecimal" if base == 16 else "decimal"
        raise ValueError(f"{what}: {key} must be a {kind} number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{what}: {key} must not be negative, got {value!r}")
    return number


@dataclass(frozen=True)
class BootState:
    """What the bootloader env says: which root to boot, whether armed, the boot counter."""

    bootloader: str
    root_part: int
    upgrade_available: bool
    bootcount: int
    bootcount_limit: int = DEFAULT_BOOTCOUNT_LIMIT

    @classmethod
    def from_files(
        cls,
        kind: str,
        main_text: bytes | str,
        bootcount_text: str | None = None,
        extra_text: str | None = None,
    ) -> BootState:
        """Read the state from the env file contents.

        u-boot: ``main_text`` is ``resinOS_uEnv.txt``, ``bootcount_text`` ``bootcount.env``,
        ``extra_text`` ``extra_uEnv.txt`` (``os_bc_lim``). GRUB: ``main_text`` is the grubenv.
        """
        if kind == UBOOT:
            text = main_text.decode("utf-8") if isinstance(main_text, bytes) else main_text
            env = parse_uboot(text)
            counts = parse_uboot(bootcount_text) if bootcount_text else {}
            extra = parse_uboot(extra_text) if extra_text else {}
            return cls(
                bootloader=UBOOT,
                root_part=_int(env.get("resin_root_part"), 16, UBOOT_ENV_FILE, "resin_root_part"),
                upgrade_available=_flag(env.get("upgrade_available"), UBOOT_ENV_FILE),
                bootcount=_int(counts.get("bootcount", "0"), 10, BOOTCOUNT_FILE, "bootcount"),
                bootcount_limit=_int(extra.get("os_bc_lim", str(DEFAULT_BOOTCOUNT_LIMIT)), 10, EXTRA_UENV_FILE, "os_bc_lim"),
            )
        if kind == GRUB:
            env = parse_grubenv(main_text)
            return cls(
                bootloader=GRUB,
                root_part=_int(env.get("resin_root_part"), 10, "grubenv", "resin_root_part"),
                upgrade_available=_flag(env.get("upgrade_available"), "grubenv"),
                bootcount=_int(env.get("bootcount", "0"), 10, "grubenv", "bootcount"),
                bootcount_limit=GRUB_BOOTCOUNT_LIMIT,
            )
        raise ValueError(f"unknown bootloader kind {kind!r} (expected {UBOOT!r} or {GRUB!r})")


def detect_bootloader(files: Mapping[str, FileContent]) -> str:
    """``"uboot"`` when ``resinOS_uEnv.txt`` is present, ``"grub"`` when a grubenv is; else ValueError."""
    if files.get(UBOOT_ENV_FILE) is not None:
        return UBOOT
    if any(files.get(name) is not None for name in GRUBENV_FILES):
        return GRUB
    raise ValueError(f"no bootloader env on the boot partition (looked for {UBOOT_ENV_FILE}, {', '.join(GRUBENV_FILES)})")


def _grubenv_name(files: Mapping[str, FileContent]) -> str:
    return next((name for name in GRUBENV_FILES if files.get(name) is not None), GRUBENV_FILES[0])


def _text(content: FileContent) -> str | None:
    return content.decode("utf-8") if isinstance(content, bytes) else content


def state_from_boot_files(files: Mapping[str, FileContent]) -> BootState:
    """Build a :class:`BootState` from ``{boot-relative name: content or None}``."""
    kind = detect_bootloader(files)
    if kind == UBOOT:
        main = files[UBOOT_ENV_FILE]
        return BootState.from_files(UBOOT, main or "", _text(files.get(BOOTCOUNT_FILE)), _text(files.get(EXTRA_UENV_FILE)))
    return BootState.from_files(GRUB, files[_grubenv_name(files)] or b"")


# --- the env of a probed device ----------------------------------------------------------------

BOOT_MOUNT = "/mnt/boot"


def env_files(dev: DeviceState) -> dict[str, FileContent]:
    """The env files the probe read on the boot partition (``name -> content``, None when absent)."""
    if dev.uenv_text is not None:
        return {UBOOT_ENV_FILE: dev.uenv_text, BOOTCOUNT_FILE: dev.bootcount_text if dev.bootcount_present else None}
    if dev.grubenv_path:
        return {dev.grubenv_path.removeprefix(BOOT_MOUNT + "/"): dev.grubenv_text}
    raise PlanError(f"no bootloader env on the boot partition (neither {UBOOT_ENV_FILE} nor a grubenv)")


def check_writable(files: Mapping[str, FileContent]) -> None:
    """Refuse to rewrite an env this module cannot render (a grubenv at another path)."""
    for name in files:
        if name not in (UBOOT_ENV_FILE, BOOTCOUNT_FILE, *GRUBENV_FILES):
            raise PlanError(f"unsupported bootloader env {BOOT_MOUNT}/{name} (only u-boot {UBOOT_ENV_FILE} and GRUB grubenv are supported)")


def boot_state(dev: DeviceState) -> BootState:
    """What the probed device's bootloader env says; PlanError when there is none or it is unreadable."""
    files = env_files(dev)
    try:
        if UBOOT_ENV_FILE in files:
            return BootState.from_files(UBOOT, files[UBOOT_ENV_FILE] or "", _text(files.get(BOOTCOUNT_FILE)), dev.extra_uenv_text)
        return BootState.from_files(GRUB, next(iter(files.values())) or "")
    except ValueError as exc:
        raise PlanError(f"cannot read the bootloader env: {exc}") from None


# --- transforms --------------------------------------------------------------------------------

def arm(state: BootState, target_index: int) -> BootState:
    """Point the env at ``target_index`` and arm the rollback (``upgrade_available=1``, count reset)."""
    return dataclasses.replace(state, root_part=target_index, upgrade_available=True, bootcount=0)


def commit(state: BootState) -> BootState:
    """Accept the running root: clear ``upgrade_available`` and the boot counter."""
    return dataclasses.replace(state, upgrade_available=False, bootcount=0)


def rollback(state: BootState, old_index: int) -> BootState:
    """Point the env back at ``old_index``, disarmed."""
    return dataclasses.replace(state, root_part=old_index, upgrade_available=False, bootcount=0)


def render_files(state: BootState, base_texts: Mapping[str, FileContent]) -> dict[str, FileContent]:
    """Contents of the env files for ``state``; other keys of ``base_texts`` are kept in order.

    A value of None means "delete the file" (u-boot ``bootcount.env`` when the count is 0, as
    the flip hook and ``rollback-stop`` do). ``extra_uEnv.txt`` is the user's and never rendered.
    """
    flag = "1" if state.upgrade_available else "0"
    if state.bootloader == UBOOT:
        base = _text(base_texts.get(UBOOT_ENV_FILE))
        env = parse_uboot(base) if base else {}
        env.update(resin_root_part=format(state.root_part, "x"), upgrade_available=flag)
        files: dict[str, FileContent] = {UBOOT_ENV_FILE: render_uboot(env, base)}
        files[BOOTCOUNT_FILE] = f"bootcount={state.bootcount}\n" if state.bootcount else None
        return files
    if state.bootloader == GRUB:
        name = _grubenv_name(base_texts)
        base_env = base_texts.get(name)
        env = parse_grubenv(base_env) if base_env else {}
        env.update(resin_root_part=str(state.root_part), upgrade_available=flag, bootcount=str(state.bootcount))
        return {name: render_grubenv(env, base_env)}
    raise ValueError(f"unknown bootloader kind {state.bootloader!r}")


def boot(state: BootState, active_index: int, other_index: int) -> tuple[BootState, int]:
    """Model one boot: the state after the bootloader ran, and the root index it boots.

    While armed the bootloader first increments ``bootcount`` (saved); past the limit it boots
    the other of the two roots, leaving ``resin_root_part`` unchanged.
    """
    roots = (active_index, other_index)
    if state.root_part not in roots:
        raise ValueError(f"resin_root_part {state.root_part} is neither root partition {active_index} nor {other_index}")
    if not state.upgrade_available:
        return state, state.root_part
    after = dataclasses.replace(state, bootcount=state.bootcount + 1)
    if after.bootcount > state.bootcount_limit:
        return after, other_index if state.root_part == active_index else active_index
    return after, state.root_part


def next_boot_root(state: BootState, active_index: int, other_index: int) -> int:
    """The root index the next boot lands on (see :func:`boot`)."""
    return boot(state, active_index, other_index)[1]


def _diff_block(name: str, content: FileContent) -> str:
    if content is None:
        return f"# {name}: (absent)\n"
    text = _text(content) or ""
    if isinstance(content, bytes):
        text = text.rstrip("#")
    if text and not text.endswith("\n"):
        text += "\n"
    return f"# {name}\n{text}"


def diff_text(before_files: Mapping[str, FileContent], after_files: Mapping[str, FileContent]) -> dict[str, str]:
    """Ansible ``diff`` strings; names missing from ``after_files`` are unchanged, None is absent."""
    names = sorted(set(before_files) | set(after_files))
    before = "".join(_diff_block(name, before_files.get(name)) for name in names)
    after = "".join(_diff_block(name, after_files[name] if name in after_files else before_files.get(name)) for name in names)
    return {"before": before, "after": after}
