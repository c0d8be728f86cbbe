"""osfleet_lab: the virtual balenaOS-like device lab behind tests/lab/labctl.

Device lifecycle (labctl, disks, power supplies, bootloader): cli.py, lab.py, device.py,
bootloader.sh, inventory.py, util.py. OS releases, images, registries and catalog: releases.py,
services.py, os/. The contract with the collection: docs/internals.md.
"""
