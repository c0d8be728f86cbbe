# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import (
    GRUBENV_SIZE,
    BootState,
    arm,
    boot,
    commit,
    detect_bootloader,
    diff_text,
    next_boot_root,
    parse_grubenv,
    parse_uboot,
    render_files,
    render_grubenv,
    render_uboot,
    rollback,
    state_from_boot_files,
)

HEADER = b"# GRUB Environment Block\n"


def grubenv(body: str) -> bytes:
    data = HEADER + body.encode()
    return data + b"#" * (GRUBENV_SIZE - len(data))


# --- u-boot text ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, env",
    [
        ("", {}),
        ("resin_root_part=2\nupgrade_available=0\n", {"resin_root_part": "2", "upgrade_available": "0"}),
        ("resin_root_part=a", {"resin_root_part": "a"}),
        ("# comment\n\n  \nkey = value \n", {"key": "value"}),
        ("k=1\nk=2\n", {"k": "2"}),
        ("k=a=b\n", {"k": "a=b"}),
        ("k=\n", {"k": ""}),
        ("a=1\r\nb=2\r\n", {"a": "1", "b": "2"}),
        ("extra_os_cmdline=quiet splash\n", {"extra_os_cmdline": "quiet splash"}),
    ],
)
def test_parse_uboot(text, env):
    assert parse_uboot(text) == env


@pytest.mark.parametrize("text, line", [("novalue\n", 1), ("a=1\n=2\n", 2), ("a=1\n\nbroken line\n", 3)])
def test_parse_uboot_rejects(text, line):
    with pytest.raises(ValueError, match=f"u-boot env: line {line} is not key=value"):
        parse_uboot(text)


@pytest.mark.parametrize(
    "text",
    [
        "resin_root_part=2\nupgrade_available=0\n",
        "b=2\na=1\n",
        "bootcount=3\n",
        "",
    ],
)
def test_uboot_round_trip_is_stable(text):
    rendered = render_uboot(parse_uboot(text), text)
    assert rendered == text
    assert render_uboot(parse_uboot(rendered), rendered) == rendered


def test_render_uboot_keeps_base_order_and_appends_new_keys():
    base = "# header\nz=1\nresin_root_part=2\nupgrade_available=0\n"
    env = {"upgrade_available": "1", "new": "x", "resin_root_part": "3", "z": "1"}
    assert render_uboot(env, base) == "z=1\nresin_root_part=3\nupgrade_available=1\nnew=x\n"


def test_render_uboot_drops_removed_keys():
    assert render_uboot({"a": "1"}, "a=0\nb=2\n") == "a=1\n"


@pytest.mark.parametrize("env", [{"a": "1\nb=2"}, {"a=b": "1"}, {"": "1"}, {" a": "1"}, {"a": "x\0"}])
def test_render_uboot_refuses_injection(env):
    with pytest.raises(ValueError, match="cannot store"):
        render_uboot(env)


# --- grubenv -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "env",
    [
        {},
        {"resin_root_part": "2", "upgrade_available": "0", "bootcount": "0"},
        {"resin_root_part": "3", "upgrade_available": "1", "bootcount": "2", "extra": "a b c"},
        {"k": "v" * 990},
    ],
)
def test_grubenv_round_trip(env):
    data = render_grubenv(env)
    assert isinstance(data, bytes)
    assert len(data) == GRUBENV_SIZE
    assert data.startswith(HEADER)
    assert parse_grubenv(data) == env
    assert render_grubenv(parse_grubenv(data), data) == data


def test_grubenv_padding_and_layout():
    data = render_grubenv({"a": "1", "b": "2"})
    assert data == HEADER + b"a=1\nb=2\n" + b"#" * (GRUBENV_SIZE - len(HEADER) - 8)


def test_grubenv_keeps_base_order():
    base = grubenv("upgrade_available=0\nbootcount=0\nresin_root_part=2\n")
    env = parse_grubenv(base)
    env["resin_root_part"] = "3"
    assert render_grubenv(env, base).startswith(HEADER + b"upgrade_available=0\nbootcount=0\nresin_root_part=3\n#")


def test_grubenv_exactly_full_and_one_byte_over():
    room = GRUBENV_SIZE - len(HEADER) - len("k=\n")
    assert len(render_grubenv({"k": "v" * room})) == GRUBENV_SIZE
    with pytest.raises(ValueError, match="1025 bytes of variables do not fit the 1024-byte block"):
        render_grubenv({"k": "v" * (room + 1)})


@pytest.mark.parametrize("data", [b"", b"resin_root_part=2\n", b"# GRUB Environment\nx=1\n", "#GRUB Environment Block\n"])
def test_grubenv_bad_header(data):
    with pytest.raises(ValueError, match="grubenv: missing header"):
        parse_grubenv(data)


def test_grubenv_accepts_str_and_unpadded():
    assert parse_grubenv("# GRUB Environment Block\nbootcount=1\n") == {"bootcount": "1"}


# --- BootState -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "main, bootcount, extra, expected",
    [
        ("resin_root_part=2\nupgrade_available=0\n", None, None, BootState("uboot", 2, False, 0, 3)),
        ("resin_root_part=3\nupgrade_available=1\n", "bootcount=2\n", None, BootState("uboot", 3, True, 2, 3)),
        ("resin_root_part=a\nupgrade_available=1\n", "", "os_bc_lim=5\n", BootState("uboot", 10, True, 0, 5)),
        ("resin_root_part=A\nupgrade_available=1\n", None, "extra_os_cmdline=quiet\n", BootState("uboot", 10, True, 0, 3)),
        ("resin_root_part=10\nupgrade_available=0\n", None, None, BootState("uboot", 16, False, 0, 3)),
    ],
)
def test_from_files_uboot(main, bootcount, extra, expected):
    assert BootState.from_files("uboot", main, bootcount, extra) == expected


@pytest.mark.parametrize(
    "body, expected",
    [
        ("resin_root_part=2\nupgrade_available=0\nbootcount=0\n", BootState("grub", 2, False, 0, 1)),
        ("resin_root_part=10\nupgrade_available=1\nbootcount=1\n", BootState("grub", 10, True, 1, 1)),
        ("resin_root_part=3\nupgrade_available=1\n", BootState("grub", 3, True, 0, 1)),
    ],
)
def test_from_files_grub(body, expected):
    assert BootState.from_files("grub", grubenv(body)) == expected


@pytest.mark.parametrize(
    "kind, main, bootcount, extra, message",
    [
        ("uboot", "upgrade_available=0\n", None, None, "resinOS_uEnv.txt: resin_root_part is missing"),
        ("uboot", "resin_root_part=2\n", None, None, "resinOS_uEnv.txt: upgrade_available must be 0 or 1, got None"),
        ("uboot", "resin_root_part=2\nupgrade_available=yes\n", None, None, "upgrade_available must be 0 or 1, got 'yes'"),
        ("uboot", "resin_root_part=zz\nupgrade_available=0\n", None, None, "resin_root_part must be a hexadecimal number, got 'zz'"),
        ("uboot", "resin_root_part=2\nupgrade_available=1\n", "bootcount=x\n", None, "bootcount.env: bootcount must be a decimal number"),
        ("uboot", "resin_root_part=2\nupgrade_available=1\n", "bootcount=-1\n", None, "bootcount must not be negative"),
        ("uboot", "resin_root_part=2\nupgrade_available=1\n", None, "os_bc_lim=\n", "extra_uEnv.txt: os_bc_lim is missing"),
        ("grub", grubenv("resin_root_part=a\nupgrade_available=0\n"), None, None, "grubenv: resin_root_part must be a decimal number"),
        ("grub", b"garbage", None, None, "grubenv: missing header"),
        ("lilo", "", None, None, "unknown bootloader kind 'lilo'"),
    ],
)
def test_from_files_errors(kind, main, bootcount, extra, message):
    with pytest.raises(ValueError, match=message):
        BootState.from_files(kind, main, bootcount, extra)


@pytest.mark.parametrize(
    "files, kind",
    [
        ({"resinOS_uEnv.txt": "x=1\n"}, "uboot"),
        ({"resinOS_uEnv.txt": "x=1\n", "grub/grubenv": b""}, "uboot"),
        ({"resinOS_uEnv.txt": None, "EFI/BOOT/grubenv": b"x"}, "grub"),
        ({"grub/grubenv": b"x"}, "grub"),
    ],
)
def test_detect_bootloader(files, kind):
    assert detect_bootloader(files) == kind


def test_detect_bootloader_none():
    with pytest.raises(ValueError, match="no bootloader env on the boot partition"):
        detect_bootloader({"config.json": "{}", "resinOS_uEnv.txt": None})


def test_state_from_boot_files():
    files = {
        "resinOS_uEnv.txt": b"resin_root_part=3\nupgrade_available=1\n",
        "bootcount.env": b"bootcount=1\n",
        "extra_uEnv.txt": "os_bc_lim=2\n",
    }
    assert state_from_boot_files(files) == BootState("uboot", 3, True, 1, 2)
    assert state_from_boot_files({"EFI/BOOT/grubenv": grubenv("resin_root_part=2\nupgrade_available=0\n")}) == BootState(
        "grub", 2, False, 0, 1
    )


# --- transforms and rendering ----------------------------------------------------------------------

UBOOT_BASE = {"resinOS_uEnv.txt": "resin_root_part=2\nupgrade_available=0\n"}


def test_arm_commit_rollback_states():
    state = BootState("uboot", 2, False, 0, 3)
    armed = arm(state, 3)
    assert armed == BootState("uboot", 3, True, 0, 3)
    assert commit(BootState("uboot", 3, True, 2, 3)) == BootState("uboot", 3, False, 0, 3)
    assert rollback(BootState("uboot", 3, True, 4, 3), 2) == BootState("uboot", 2, False, 0, 3)
    assert state == BootState("uboot", 2, False, 0, 3)  # inputs are not mutated


def test_render_files_uboot_arm():
    armed = arm(BootState.from_files("uboot", UBOOT_BASE["resinOS_uEnv.txt"]), 3)
    assert render_files(armed, UBOOT_BASE) == {
        "resinOS_uEnv.txt": "resin_root_part=3\nupgrade_available=1\n",
        "bootcount.env": None,
    }


def test_render_files_uboot_hex_and_extra_keys_kept():
    base = {"resinOS_uEnv.txt": "# managed\nfoo=bar\nresin_root_part=2\nupgrade_available=0\n", "extra_uEnv.txt": "os_bc_lim=1\n"}
    files = render_files(arm(BootState("uboot", 2, False, 0), 10), base)
    assert files == {"resinOS_uEnv.txt": "foo=bar\nresin_root_part=a\nupgrade_available=1\n", "bootcount.env": None}
    assert "extra_uEnv.txt" not in files


def test_render_files_uboot_nonzero_bootcount_and_commit():
    state = BootState("uboot", 3, True, 2)
    assert render_files(state, {})["bootcount.env"] == "bootcount=2\n"
    committed = render_files(commit(state), {"resinOS_uEnv.txt": "resin_root_part=3\nupgrade_available=1\n", "bootcount.env": "bootcount=2\n"})
    assert committed == {"resinOS_uEnv.txt": "resin_root_part=3\nupgrade_available=0\n", "bootcount.env": None}


@pytest.mark.parametrize("name", ["grub/grubenv", "EFI/BOOT/grubenv"])
def test_render_files_grub(name):
    base = {name: grubenv("resin_root_part=2\nupgrade_available=0\nbootcount=0\nother=1\n")}
    files = render_files(arm(BootState.from_files("grub", base[name]), 3), base)
    assert list(files) == [name]
    assert len(files[name]) == GRUBENV_SIZE
    assert parse_grubenv(files[name]) == {"resin_root_part": "3", "upgrade_available": "1", "bootcount": "0", "other": "1"}
    assert BootState.from_files("grub", files[name]) == BootState("grub", 3, True, 0, 1)


def test_render_files_grub_defaults_to_grub_dir():
    assert list(render_files(BootState("grub", 2, False, 0, 1), {})) == ["grub/grubenv"]


def test_render_then_read_round_trip_uboot():
    for state in (BootState("uboot", 2, False, 0), BootState("uboot", 3, True, 2), BootState("uboot", 11, True, 7, 3)):
        files = render_files(state, UBOOT_BASE)
        assert BootState.from_files("uboot", files["resinOS_uEnv.txt"], files["bootcount.env"]) == state


# --- the bootloader model ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "state, expected",
    [
        (BootState("uboot", 3, False, 0), 3),  # not armed: boots what the env says
        (BootState("uboot", 3, False, 9), 3),  # the count only matters while armed
        (BootState("uboot", 3, True, 0), 3),
        (BootState("uboot", 3, True, 2), 3),  # becomes 3, 3 > 3 is false
        (BootState("uboot", 3, True, 3), 2),  # becomes 4 > 3: the other root
        (BootState("uboot", 2, True, 3), 3),
        (BootState("uboot", 3, True, 0, 0), 2),  # limit 0: the first boot falls back
        (BootState("grub", 3, True, 0, 1), 3),
        (BootState("grub", 3, True, 1, 1), 2),  # grub: second boot without a clear falls back
    ],
)
def test_next_boot_root(state, expected):
    assert next_boot_root(state, 2, 3) == expected
    assert next_boot_root(state, 3, 2) == expected  # argument order does not matter


def test_boot_sequence_uboot_falls_back_on_fourth_boot():
    state = arm(BootState("uboot", 2, False, 0), 3)
    roots = []
    for _boot_number in range(5):
        state, root = boot(state, 2, 3)
        roots.append(root)
    assert roots == [3, 3, 3, 2, 2]
    assert state.root_part == 3 and state.bootcount == 5  # the file is not changed by the fallback


def test_boot_commit_stops_counting():
    state, first_root = boot(arm(BootState("uboot", 2, False, 0), 3), 2, 3)
    assert first_root == 3
    state = commit(state)
    for _boot_number in range(6):
        state, root = boot(state, 2, 3)
        assert root == 3
    assert state.bootcount == 0


def test_boot_rejects_unknown_root():
    with pytest.raises(ValueError, match="resin_root_part 5 is neither root partition 2 nor 3"):
        next_boot_root(BootState("uboot", 5, True, 0), 2, 3)


# --- diff ----------------------------------------------------------------------------------------

def test_diff_text_uboot_arm():
    before = {"resinOS_uEnv.txt": "resin_root_part=2\nupgrade_available=0\n", "bootcount.env": "bootcount=1\n"}
    after = render_files(arm(BootState.from_files("uboot", before["resinOS_uEnv.txt"]), 3), before)
    diff = diff_text(before, after)
    assert diff == {
        "before": "# bootcount.env\nbootcount=1\n# resinOS_uEnv.txt\nresin_root_part=2\nupgrade_available=0\n",
        "after": "# bootcount.env: (absent)\n# resinOS_uEnv.txt\nresin_root_part=3\nupgrade_available=1\n",
    }


def test_diff_text_grub_strips_padding_and_keeps_unlisted():
    before = {"grub/grubenv": grubenv("resin_root_part=2\nupgrade_available=0\n"), "config.json": None}
    after = {"grub/grubenv": grubenv("resin_root_part=3\nupgrade_available=1\n")}
    diff = diff_text(before, after)
    assert diff["before"] == "# config.json: (absent)\n# grub/grubenv\n# GRUB Environment Block\nresin_root_part=2\nupgrade_available=0\n"
    assert diff["after"] == "# config.json: (absent)\n# grub/grubenv\n# GRUB Environment Block\nresin_root_part=3\nupgrade_available=1\n"


def test_diff_text_no_change():
    files = {"resinOS_uEnv.txt": "a=1\n"}
    diff = diff_text(files, dict(files))
    assert diff["before"] == diff["after"]
