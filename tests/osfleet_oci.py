# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image layers made by the tests (unit tests of the writer, crafted images on lab devices)."""

from __future__ import annotations

import io
import tarfile
import typing as t

#: a layer entry: file content (bytes), "dir", or ("symlink", target)
Entry = t.Union[bytes, str, tuple[str, str], None]


def tar_layer(entries: t.Mapping[str, Entry]) -> bytes:
    """An uncompressed tar of ``entries`` in their order (GNU format, fixed mtime)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if content == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                data = content if isinstance(content, bytes) else b""
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
