"""Errors a user can act on: command modules print their message and exit, without a stack trace."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

from mura.data.images import ImageDecodeError
from mura.data.index import MuraDataError

log = logging.getLogger("mura")

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that is not a `mura` checkpoint, or that this version cannot read."""


class ConfigError(ValueError):
    """A setting that cannot work, with the setting named."""


USER_ERRORS = (MuraDataError, ImageDecodeError, CheckpointError, ConfigError)


def user_error(error: BaseException) -> BaseException | None:
    """The user error behind `error`, or None. `hydra.utils.instantiate` wraps whatever a constructor raises (a
    misspelled body part met by the data module, say) in InstantiationException, the original as its cause."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, (*USER_ERRORS, MissingMandatoryValue)) else None


def user_message(error: BaseException) -> str:
    if isinstance(error, MissingMandatoryValue):
        # OmegaConf's own text ("Missing mandatory value: input", then its internals) does not say what to do.
        return f"{error.full_key} is not set: pass {error.full_key}=... (--help lists the settings)"
    return str(error)


def exit_on_user_error(function: Callable[..., T]) -> Callable[..., T]:
    """Report a user-facing error as one clear line (exit code 2) instead of a traceback, Hydra's wrapping of an
    error raised while instantiating a config included; any other error goes on as it came."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (*USER_ERRORS, InstantiationException, MissingMandatoryValue) as error:
            cause = user_error(error)
            if cause is None:
                raise
            log.error("%s", user_message(cause))
            sys.exit(2)

    return wrapper
