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


def _collections_root() -> Path:
    if REPO_ROOT.parent.name == "osfleet" and REPO_ROOT.parent.parent.name == "ansible_collections" and REPO_ROOT.name == "hup":
        return REPO_ROOT.parent.parent.parent
    root = REPO_ROOT / "build" / "collections"
    link = root / "ansible_collections" / "osfleet" / "hup"
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    return root


_ROOT = str(_collections_root())
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
os.environ["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(
    filter(None, [_ROOT, os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")])
)
