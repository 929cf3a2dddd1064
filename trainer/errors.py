"""The project's one base exception and its subclasses.

Each error says what happened and which setting to change. All of them pickle
across Ray actors (plain ``Exception`` subclasses with a single message arg).
"""

from __future__ import annotations


class RectrainError(Exception):
    """Base class for every error rectrain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep pickling simple across Ray actors
        return (self.__class__, (self.message,))


class SpecError(RectrainError):
    """A job spec that cannot run: names the field and what to change."""


class DataError(RectrainError):
    """Input data that cannot be read: names the file/column and what to change."""


class CapacityError(SpecError):
    """The model does not fit the workers' memory."""


class DivergedError(RectrainError):
    """Training diverged: a non-finite loss or NE (``training.on_divergence: fail``)."""


def parse_error_line(e: Exception) -> str:
    """A YAML/JSON parse error in one line (PyYAML's text spans several: the problem, a
    caret under the line): ``expected ',' or ']' at line 2, column 1``."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return text[:300]


def first_line(e: BaseException, limit: int = 300) -> str:
    """The one line of an exception worth showing (torch's weights-only refusal: its
    reason, not its advice)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    elif "invalid load key" in text or "failed finding central directory" in text:
        return "not a torch.save file"
    return (next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(e).__name__)[:limit]
