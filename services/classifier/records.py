"""Why deciding a patient failed, in terms that carry no value.

How a record is read (its event, or why it is refused) is contract-level code shared with the
coordinator's timeline: `shared.contract.records`.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass


@dataclass(frozen=True)
class DecisionFailure:
    """Why deciding a patient raised, in terms that carry no value: the exception's type and
    the function of the project where it was raised (never the message, which may quote data)."""

    error: str  # the exception's type name, e.g. OverflowError
    raised_in: str  # module.function, e.g. services.classifier.pain_duration.utc_date

    @classmethod
    def of(cls, error: BaseException) -> DecisionFailure:
        return cls(type(error).__name__, raised_in(error))


def raised_in(error: BaseException) -> str:
    """`module.function` of the innermost frame of the traceback that is the project's own code
    (its packages, or a file outside the standard library and the installed packages): the rule
    that failed, not the library function it called."""
    where = ours = ""
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        module = frame.f_globals.get("__name__", "?")
        where = f"{module}.{frame.f_code.co_name}"
        if module.startswith(_PROJECT) or not frame.f_code.co_filename.startswith(_LIBRARIES):
            ours = where
        traceback = traceback.tb_next
    return ours or where or "(unknown)"


_PROJECT = ("services.", "shared.", "painpath.")
_LIBRARIES = tuple(
    {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
)
