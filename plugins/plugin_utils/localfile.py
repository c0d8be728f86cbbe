# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Files on the controller: written atomically (the catalog, a rollout's state directory)."""

from __future__ import annotations

import os
import tempfile

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import OsfleetError


def write_atomic(path: str, text: str, error: type[OsfleetError] = OsfleetError, mode: int = 0o644) -> None:
    """Replace ``path`` by ``text``: a temporary file beside it, fsync, rename, fsync of the directory
    (an existing file keeps its mode). A failure raises ``error`` naming the file."""
    directory = os.path.dirname(path) or "."
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        pass
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise error(f"cannot write {path}: {exc.strerror or exc}") from None
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
