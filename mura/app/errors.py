"""Errors a user can act on: command modules print their message and exit, without a stack trace."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from mura.data.images import ImageDecodeError
from mura.data.index import MuraDataError

log = logging.getLogger("mura")

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that is not a `mura` checkpoint, or that this version cannot read."""


class ConfigError(ValueError):
    """A setting that cannot work, with the setting named."""


USER_ERRORS = (MuraDataError, ImageDecodeError, CheckpointError, ConfigError)


def exit_on_user_error(function: Callable[..., T]) -> Callable[..., T]:
    """Report a user-facing error as one clear line (exit code 2) instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as error:
            log.error("%s", error)
            sys.exit(2)

    return wrapper
