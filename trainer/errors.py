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
