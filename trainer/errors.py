"""The project's one base exception and its subclasses.

Each error says what happened and which setting to change. All of them pickle
across Ray actors (plain ``Exception`` subclasses with a single message arg; a
:class:`SpecError` also carries its field errors).

A :class:`SpecError` holds its problems as data: a list of :class:`FieldError`
(the field's path as a tuple, and what is wrong there). The API's 422 ``detail`` is
built from that list; the one-line-per-problem text (``message``, what the CLI shows)
is derived from it: ``model.dense_arch: the last layer ...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Self

FieldPath = tuple[str | int, ...]


def dotted(loc: FieldPath) -> str:
    """``("regularizers", 0, "p")`` -> ``regularizers.0.p``."""
    return ".".join(str(p) for p in loc)


@dataclass(frozen=True)
class FieldError:
    """One problem of a spec: the field it is about (empty: the spec as a whole, or a
    place that is not one field) and what is wrong there / what to change."""

    loc: FieldPath
    msg: str

    @property
    def line(self) -> str:
        """The human form: ``dotted.path: msg`` (``msg`` alone without a field)."""
        return f"{dotted(self.loc)}: {self.msg}" if self.loc else self.msg

    def under(self, *prefix: str | int) -> "FieldError":
        """The same problem, its field nested under ``prefix`` (``base``, ...)."""
        return FieldError((*prefix, *self.loc), self.msg)

    @classmethod
    def from_line(cls, line: str) -> "FieldError":
        """The field error of a message written the old way, ``dotted.path: msg``
        (for raisers that give a message only; new code passes ``field=``)."""
        head, sep, rest = line.partition(": ")
        if sep and _DOTTED.fullmatch(head):
            return cls(_as_loc(head), rest)
        return cls((), line)


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def _as_loc(field: str | Sequence[str | int]) -> FieldPath:
    """A path tuple from a dotted path (list positions as ints, as pydantic gives them)."""
    if isinstance(field, str):
        return tuple(int(p) if p.isdigit() else p for p in field.split("."))
    return tuple(field)


class FieldValueError(ValueError):
    """A pydantic validator's refusal naming its field (``model.dense_arch``, even from a
    nested model): pydantic keeps the exception in the error's ``ctx``, so the API and
    :func:`trainer.spec.format_validation_error` read the field from it, not the text."""

    def __init__(self, field: str | Sequence[str | int], msg: str) -> None:
        self.error = FieldError(_as_loc(field), msg)
        super().__init__(self.error.line)


class RectrainError(Exception):
    """Base class for every error rectrain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep pickling simple across Ray actors
        return (self.__class__, (self.message,))


class SpecError(RectrainError):
    """A job spec that cannot run: names the field and what to change.

    ``SpecError(msg, field="scaling.num_workers")`` (or a path tuple) for one problem,
    ``SpecError(errors=[FieldError(...), ...])`` for several; ``SpecError("a.b: msg")``
    (the old form) takes the field from the message's head. ``errors`` is the data,
    ``message`` its text (one line per problem)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | Sequence[str | int] | None = None,
        errors: Iterable[FieldError] | None = None,
    ) -> None:
        if errors is not None:
            errs = list(errors)
        elif field is not None:
            errs = [FieldError(_as_loc(field), message or "")]
        else:
            errs = [FieldError.from_line(ln) for ln in (message or "").splitlines()] or [FieldError((), "")]
        self.errors: list[FieldError] = errs
        super().__init__("\n".join(e.line for e in errs))

    @classmethod
    def at(cls, field: str | Sequence[str | int], msg: str) -> Self:
        """One problem at ``field`` (a dotted path or a path tuple)."""
        return cls(msg, field=field)

    def __reduce__(self):  # the field errors travel with it
        return (_rebuild_spec_error, (self.__class__, [(e.loc, e.msg) for e in self.errors]))

    def under(self, *prefix: str | int) -> "SpecError":
        """The same error with every field nested under ``prefix`` (same class)."""
        return _rebuild_spec_error(self.__class__, [((*prefix, *e.loc), e.msg) for e in self.errors])


def _rebuild_spec_error(cls: type[SpecError], errors: list[tuple[FieldPath, str]]) -> SpecError:
    err = cls.__new__(cls)
    SpecError.__init__(err, errors=[FieldError(tuple(loc), msg) for loc, msg in errors])
    return err


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
