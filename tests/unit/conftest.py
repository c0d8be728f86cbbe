# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make this checkout importable as ``ansible_collections.osfleet.hup`` for pytest.

When the checkout already sits at ``.../ansible_collections/osfleet/hup`` (ansible-test units),
nothing is done. Otherwise ``build/collections/ansible_collections/osfleet/hup`` becomes a
symlink to the repository root and ``build/collections`` goes on ``sys.path`` and on
``ANSIBLE_COLLECTIONS_PATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _in_collection_tree() -> bool:
    return REPO_ROOT.name == "hup" and REPO_ROOT.parent.name == "osfleet" and REPO_ROOT.parent.parent.name == "ansible_collections"


def _link_collection() -> str:
    root = REPO_ROOT / "build" / "collections"
    link = root / "ansible_collections" / "osfleet" / "hup"
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return str(root)


if not _in_collection_tree():
    _ROOT = _link_collection()
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)
    _PATHS = [path for path in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if path and path != _ROOT]
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([_ROOT, *_PATHS])
