"""Errors a user can cause. The CLI turns each into one line and a non-zero exit."""

from __future__ import annotations


class RobenchError(Exception):
    """A problem with the user's input (path, name, value, file), not a bug.

    The CLI prints ``Error: <message>`` on one line and exits with ``exit_code``.
    """

    exit_code = 1


class UsageError(RobenchError):
    """A bad command-line value; exits with 2 like Click's own usage errors."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name that no registry entry has; the message suggests the nearest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(RobenchError):
    """A checkpoint that cannot be loaded safely or does not describe a valid model."""


class DataError(RobenchError):
    """A dataset that is missing, malformed or out of range."""


class AttackVerificationError(RobenchError):
    """An attack returned examples outside [0, 1] or outside its eps-ball."""
