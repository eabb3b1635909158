"""Names people read: display names, group titles, device names.

A name is shown to others next to messages, so it must not be able to pass for another
one or rearrange what is around it. It is normalised to NFC (one encoding per text), and
refused if it holds:

- control and format characters (Unicode categories Cc, Cf): bidi overrides, embeddings
  and isolates (U+202A-202E, U+2066-2069) that reorder the text shown after them, marks
  (U+200E, U+200F, U+061C), zero-width spaces and joiners (U+200B-200D, U+2060, U+FEFF),
  soft hyphens, tags... except a zero-width joiner between two emoji (👨‍👩‍👧) and the tag
  sequence of a subdivision flag (🏴󠁧󠁢󠁳󠁣󠁴󠁿);
- line and paragraph separators, spaces other than U+0020 (no-break, ideographic, ... look
  like a space but make a different name), surrogates, private-use and unassigned code
  points;
- more than `MAX_MARKS` combining marks on one character (text that spills over the
  lines around it).

Leading and trailing spaces are removed.
"""

from __future__ import annotations

import unicodedata

from .errors import bad_request

ZWJ, VS16 = "\u200d", "\ufe0f"
BLACK_FLAG, CANCEL_TAG = "\U0001f3f4", "\U000e007f"
MAX_MARKS = 4  # combining marks on one base character
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def emoji_char(ch: str) -> bool:
    """Whether `ch` is a pictograph or symbol emoji sequences are made of."""
    cp = ord(ch)
    return (
        0x1F000 <= cp <= 0x1FAFF  # pictographs, emoticons, flags (regional indicators), skin tones
        or 0x2190 <= cp <= 0x2BFF  # arrows, technical, dingbats, symbols
        or 0x3030 <= cp <= 0x303D or 0x3297 <= cp <= 0x3299
        or cp in (0x00A9, 0x00AE, 0x203C, 0x2049, 0x2122, 0x2139)
        or 0xE0020 <= cp <= 0xE007F  # tag sequences (subdivision flags)
    )


def _tag(ch: str) -> bool:
    return 0xE0020 <= ord(ch) <= 0xE007F


def unsafe_characters(text: str) -> list[str]:
    """The characters of (NFC) `text` a name may not hold, as U+XXXX, in order."""
    out = []
    marks = 0
    for i, ch in enumerate(text):
        category = unicodedata.category(ch)
        if category in ("Mn", "Me"):
            marks += 1
            if marks > MAX_MARKS:
                out.append(f"U+{ord(ch):04X}")
            continue
        marks = 0
        if ch == ZWJ:
            before = text[i - 1] if i else ""
            after = text[i + 1] if i + 1 < len(text) else ""
            if before in (VS16,) and i >= 2:
                before = text[i - 2]
            if before and after and (emoji_char(before) or 0x1F3FB <= ord(before) <= 0x1F3FF) and emoji_char(after):
                continue
        elif _tag(ch):
            start = i
            while start > 0 and _tag(text[start - 1]):
                start -= 1
            end = i
            while end + 1 < len(text) and _tag(text[end + 1]):
                end += 1
            if start > 0 and text[start - 1] == BLACK_FLAG and text[end] == CANCEL_TAG and end > start:
                continue
        elif category == "Zs" and ch == " ":
            continue
        if category in REFUSED_CATEGORIES or category == "Zs":
            out.append(f"U+{ord(ch):04X}")
    return out


def check_name(value: object, field: str, max_length: int, *, empty: bool = False) -> str:
    """A name as stored: NFC, stripped, at most `max_length` characters, no character a
    name may not hold (see the module's docstring); else `bad_request` naming the field."""
    if not isinstance(value, str):
        raise bad_request(f"'{field}' must be a string of at most {max_length} characters")
    name = unicodedata.normalize("NFC", value).strip(" ")
    if len(name) > max_length:
        raise bad_request(f"'{field}' must be a string of at most {max_length} characters")
    if not name and not empty:
        raise bad_request(f"'{field}' must not be empty")
    refused = unsafe_characters(name)
    if refused:
        shown = ", ".join(dict.fromkeys(refused[:5]))
        raise bad_request(f"'{field}' may not hold control, format, invisible or bidi characters, spaces other "
                          f"than U+0020, or more than {MAX_MARKS} combining marks on a character ({shown})")
    return name


def clean_name(value: object, max_length: int) -> str:
    """What is left of a name given in passing (a device's name) once every character a
    name may not hold is dropped; "" for anything but a string."""
    if not isinstance(value, str):
        return ""
    name = unicodedata.normalize("NFC", value[: max_length * 4])
    refused = set(unsafe_characters(name))
    return "".join(ch for ch in name if f"U+{ord(ch):04X}" not in refused).strip(" ")[:max_length]
