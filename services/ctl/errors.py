"""Errors taskctl reports as one line and an exit code, never as a traceback."""

from __future__ import annotations

USAGE = 2  # bad input, unknown ids: the operator has to change the command
FAILED = 1  # the command was fine but could not be carried out


class CtlError(Exception):
    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def bad_input(message: str) -> CtlError:
    return CtlError(message, USAGE)


def failed(message: str) -> CtlError:
    return CtlError(message, FAILED)
