# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet_lab: the virtual balenaOS-like device lab behind tests/lab/labctl.

Device lifecycle (labctl, disks, power supplies, bootloader): cli.py, lab.py, device.py,
bootloader.sh, inventory.py, util.py. OS releases, images, registries and catalog: releases.py,
services.py, os/. The contract with the collection: docs/internals.md.
"""
