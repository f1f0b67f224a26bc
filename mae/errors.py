"""User-facing errors: one line naming the field, the bad value and what is allowed."""

from __future__ import annotations

import errno
from typing import Any


class UserError(Exception):
    """A mistake in the user's input (config, override, ablation file, checkpoint, data path).

    The CLI prints `error: <message>` on one line and exits 2, without a traceback.

    Args:
        field: dotted name of the offending setting (e.g. `model.mask_ratio`).
        value: the value that was given.
        allowed: what would have been accepted (e.g. "a number in [0, 1)").
    """

    def __init__(self, field: str = "", value: Any = None, allowed: str = "", *, text: str | None = None,
                 message: str | None = None):
        if message is not None:
            # torch's DataLoader re-raises a worker's exception as `type(message="Caught ... Original
            # Traceback ...\nmae.errors.UserError: <text>")`: keep the original one-line text.
            text = message.rstrip().splitlines()[-1].split("UserError: ", 1)[-1]
        self.field = field
        self.value = value
        self.allowed = allowed
        if text is None:
            text = f"{field}={value!r} is invalid: allowed {allowed}" if allowed else f"{field}={value!r} is invalid"
        super().__init__(text)

    @classmethod
    def message(cls, field: str, text: str) -> "UserError":
        """An error whose whole message is `text` (still tagged with the field it concerns)."""
        return cls(field, text=text)


def check_choice(field: str, value: Any, choices) -> Any:
    """Return `value` if it is one of `choices`, else raise UserError listing them."""
    if value not in choices:
        raise UserError(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def check_range(field: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = True) -> float:
    """Return `value` if it is a number inside the interval, else raise UserError naming the interval."""
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise UserError(field, value, f"a number in {interval}")
    return value


# OSError numbers that are the user's to fix (a path, a permission, a full disk), not a crash.
USER_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOTDIR: "a path component is not a folder",
               errno.EEXIST: "exists and is not a folder", errno.EISDIR: "is a folder",
               errno.ENAMETOOLONG: "name too long", errno.ENOENT: "no such file or folder"}


def user_error_from_os(exc: OSError) -> UserError | None:
    """The one-line UserError for an OSError the user can fix (a full disk, a file where a folder is
    expected, no permission), naming the path; None for any other OSError (a crash)."""
    if not isinstance(exc, OSError) or exc.errno not in USER_ERRNOS:
        return None
    path = exc.filename if exc.filename is not None else "a file of the run"
    return UserError.message("path", f"{path}: {USER_ERRNOS[exc.errno]} ({exc.strerror or exc})")
