# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exception hierarchy shared by the osfleet.hup controller-side code."""

from __future__ import annotations


class OsfleetError(Exception):
    """Base class of every error raised on purpose by osfleet.hup."""


class CatalogError(OsfleetError):
    """The release catalog is missing, unreadable, malformed or lacks a release."""


class PlanError(OsfleetError):
    """A step cannot build a plan from the arguments and the probed device state."""


class DeviceError(OsfleetError):
    """The device answered in an unexpected way or did not converge."""


class NotStaged(PlanError):
    """A step that comes earlier in the update has not run (no stamp, image not fetched, boot files
    not copied).

    In check mode those steps did not write anything, so the later steps plan as if they had
    (``assume_staged``) and say so, instead of failing: ``--check`` shows the whole update.
    """
