"""Line clean-up shared by the English source reader: control characters, Unicode, whitespace.

Kept free of I/O so the same rules can be applied to any text column.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

NormalForm = Literal["NFC", "NFKC", "NFD", "NFKD"]

# C0/C1 control characters other than the whitespace ones (\t \n \v \f \r, which the
# whitespace collapse turns into spaces), plus the byte-order mark: none of them carry text,
# and NUL in particular breaks tools downstream (sentencepiece, C string APIs).
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff]")


def strip_control(text: str) -> tuple[str, bool]:
    """Remove non-whitespace control characters (NUL, ESC, DEL, C1, BOM).

    Args:
        text: Any string.

    Returns:
        The string without them, and whether anything was removed.
    """
    stripped = _CONTROL.sub("", text)
    return stripped, len(stripped) != len(text)


def collapse_whitespace(text: str) -> str:
    """Turn every run of Unicode whitespace into one space and trim both ends."""
    return " ".join(text.split())


def clean_line(text: str, form: NormalForm = "NFKC") -> tuple[str, bool]:
    """Clean one line of text: control characters, Unicode normal form, whitespace.

    Normalisation runs before the whitespace collapse because NFKC maps exotic spaces
    (U+00A0, U+3000, ...) onto plain ones, which the collapse then merges.

    Args:
        text: The raw line (already decoded).
        form: Unicode normal form (``NFC``, ``NFKC``, ``NFD`` or ``NFKD``).

    Returns:
        The cleaned line (possibly empty) and whether control characters were removed.
    """
    text, had_control = strip_control(text)
    return collapse_whitespace(unicodedata.normalize(form, text)), had_control

