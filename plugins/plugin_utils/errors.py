# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Exception hierarchy shared by the osfleet.hup controller-side code.

One convention for failure: a decide function raises (:class:`PlanError` and its subclasses), an
act or a verify raises :class:`DeviceError`, the catalog :class:`CatalogError`. The action base
(:mod:`.action`) turns every :class:`OsfleetError` into a failed result: ``msg`` (the device's
name and the reason), ``reason`` (the reason alone) and the error's ``data``, the result keys a
step documents as returned also on failure.
"""

from __future__ import annotations

import typing as t


class OsfleetError(Exception):
    """Base class of every error raised on purpose by osfleet.hup.

    ``data``: result keys the failed result still carries (e.g. the lock's holder).
    """

    def __init__(self, message: str, **data: t.Any) -> None:
        super().__init__(message)
        self.data: dict[str, t.Any] = data


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


def error_text(exc: BaseException) -> str:
    """The text of ``exc`` on one line, never empty and never ending in a colon.

    A connection plugin can raise with an empty reason (ssh exits 255 and prints nothing: "Failed to
    connect to the host via ssh: "); the message then says that no detail was given instead of
    ending in an empty string after the colon.
    """
    text = " ".join(str(exc).split())
    if not text:
        return f"{type(exc).__name__} (no detail given)"
    if text.endswith(":"):
        return f"{text[:-1].rstrip()} (no detail given)"
    return text
