# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""osfleet.hup's controller-side library, private to the collection (docs/development.md, "Where code goes").

* ``steps/<step>.py``: a step's pure decision (its argument and plan dataclasses, its decide function);
* ``<model>.py``: the models and helpers steps share (device state, bootloader env, image cache, boot
  files copy, catalog, versions, rollback markers, ...);
* ``scripts/<name>.sh``: every device script, loaded by ``shell.py``;
* ``action.py``: the base of the action plugins (``plugins/action/<step>.py``), which only wire
  probe -> decide -> act -> verify.
"""
