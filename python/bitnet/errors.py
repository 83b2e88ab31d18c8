"""Exception hierarchy of the bitnet package.

Every error raised by the library is a :class:`BitNetError` with a numeric ``code`` (the
VIBEE libbitnet codes, extended) and a ``code_name``. Where Python convention has a natural
built-in exception, a subclass also derives from it, so ``except ValueError`` works for bad
arguments, ``except TimeoutError`` for timeouts and ``except FileNotFoundError`` for a
missing model file or device node.
"""
from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "BitNetError",
    "BitNetValueError",
    "BitNetTimeoutError",
    "BitNetFileNotFoundError",
    "BitNetFormatError",
    "BitNetBusyError",
    "BitNetStateError",
]


class ErrorCode(enum.IntEnum):
    """Error codes (negative, as in libbitnet; 0 is success)."""

    OK = 0
    OPEN = -1
    MMAP = -2
    IOCTL = -3
    TIMEOUT = -4
    BUSY = -5
    INVALID = -6
    NO_MEMORY = -7
    HW_ERROR = -8
    FILE = -9
    CLOSED = -10
    ABORTED = -11
    STATE = -12


class BitNetError(Exception):
    """Base class of every bitnet error.

    Attributes
    ----------
    code : int
        One of :class:`ErrorCode` (negative integers).
    code_name : str
        The code's name, e.g. ``"BUSY"``.
    card_error : int
        For a fault the card reported (code ``HW_ERROR``): the card's own error code
        (docs/DEVICE_ABI.md section 10, e.g. 2 = DMA, 8 = FIFO_OVERFLOW, 13 = ENGINE); else 0.
    card_error_name : str
        Its name (``"DMA"``, ``"FIFO_OVERFLOW"``, ...), ``""`` when ``card_error`` is 0.
    """

    def __init__(self, code: int, message: str, card_error: int = 0) -> None:
        super().__init__(message)
        self.code = int(code)
        try:
            self.code_name = ErrorCode(self.code).name
        except ValueError:
            self.code_name = "UNKNOWN"
        self.card_error = int(card_error)
        self.card_error_name = card_error_name(self.card_error)

    def __str__(self) -> str:  # keep the plain message: it already names the problem
        return str(self.args[0]) if self.args else ""


class BitNetValueError(BitNetError, ValueError):
    """A bad argument (code INVALID)."""


class BitNetTimeoutError(BitNetError, TimeoutError):
    """A wait ran out of time (code TIMEOUT)."""


class BitNetFileNotFoundError(BitNetError, FileNotFoundError):
    """A model file or device node does not exist (code FILE or OPEN)."""


class BitNetFormatError(BitNetError):
    """A model file is malformed or unsupported (code FILE)."""


class BitNetBusyError(BitNetError):
    """The device is running another job (code BUSY)."""


class BitNetStateError(BitNetError):
    """The call is not valid in the device's current state (codes STATE, CLOSED)."""


# The card error codes of docs/DEVICE_ABI.md section 10 (enum bitnet_card_error); tests/test_abi.py
# checks this table against cpp/bitnet_abi.h.
CARD_ERRORS = {
    0: "OK", 1: "INVALID_PARAM", 2: "DMA", 3: "TIMEOUT", 4: "BUSY", 5: "NO_MEMORY", 6: "WEIGHT_MISMATCH", 7: "HW",
    8: "FIFO_OVERFLOW", 9: "FIFO_UNDERFLOW", 10: "AXI", 11: "ABORTED", 12: "NO_SLOT", 13: "ENGINE",
}


def card_error_name(card_error: int) -> str:
    """The name of a card error code (``"DMA"`` for 2), ``""`` for 0."""
    if not card_error:
        return ""
    return CARD_ERRORS.get(int(card_error), "UNKNOWN")


def _from_code(code: int, message: str, card_error: int = 0) -> BitNetError:
    """Build the exception instance for a C++ error (used by the extension module)."""
    code = int(code)
    if card_error:
        return BitNetError(code, message, card_error)
    if code == ErrorCode.INVALID:
        return BitNetValueError(code, message)
    if code == ErrorCode.TIMEOUT:
        return BitNetTimeoutError(code, message)
    if code in (ErrorCode.FILE, ErrorCode.OPEN) and ("No such file" in message or "does not exist" in message):
        return BitNetFileNotFoundError(code, message)
    if code == ErrorCode.FILE:
        return BitNetFormatError(code, message)
    if code == ErrorCode.BUSY:
        return BitNetBusyError(code, message)
    if code in (ErrorCode.STATE, ErrorCode.CLOSED):
        return BitNetStateError(code, message)
    return BitNetError(code, message)
