# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline stand-in for pip's ``get-pip.py`` bootstrap script, for ansible-test.

ansible-test bootstraps pip into every virtual environment it creates (one per sanity test) by
running ``get-pip-<version>.py``, which it downloads from ci-files.testing.ansible.com unless
``~/.ansible/test/cache/get_pip_<version with underscores>.py`` already exists. That host is not
reachable from the lab machines, so ``tests/tools/sanity`` copies this file to that cache path.

Like get-pip.py it is called as ``python get_pip.py [pip install options] pip==<version>
[--no-setuptools] [--no-wheel]``: it installs the pip bundled with this Python (``ensurepip``, no
network) and then lets that pip install the requested packages from the configured package
indexes.
"""

from __future__ import annotations

import ensurepip
import subprocess
import sys

# Options only get-pip.py understands; `pip install` would reject them.
GET_PIP_ONLY_OPTIONS = frozenset({"--no-setuptools", "--no-wheel"})


def pip_install_arguments(argv: list[str]) -> list[str]:
    """Return the command line arguments that `pip install` accepts."""
    return [arg for arg in argv if arg not in GET_PIP_ONLY_OPTIONS]


def wants_packages(arguments: list[str]) -> bool:
    """Return True when the arguments name at least one package to install."""
    return any(not arg.startswith("-") for arg in arguments)


def main(argv: list[str]) -> int:
    """Bootstrap pip offline, then install the requested packages with it."""
    ensurepip.bootstrap(upgrade=True)
    arguments = pip_install_arguments(argv)
    if not wants_packages(arguments):
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", *arguments])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
