"""The text a spreadsheet cell shows: its value under its number format.

A workbook stores a number and a format; the person who typed ``25%``, ``3.50``, ``1,234`` or
``1995-03-01`` sees that, and expects to train on it, not on ``0.25``, ``3.5`` or
``1995-03-01T00:00:00``. :func:`shown_text` writes the common formats as Excel does: fixed
decimals, thousands separators, percents, scientific notation, currency and other literal text
around a number, negative and zero sections, TRUE and FALSE, dates and times (numbers and
names of months and days, 12-hour clocks, fractions of a second) and elapsed times
(``[h]:mm``). The locale's short date (the built-in format Excel shows as ``3/1/1995`` in one
country and ``01/03/1995`` in another) is written as ISO 8601, since the workbook does not say
which locale it was shown in. A format it does not read (fractions, engineering notation,
conditions) gives the value's plain text.

Examples:
    >>> shown_text(0.25, "0%"), shown_text(1234.5, "#,##0.00"), shown_text(3, "General")
    ('25%', '1,234.50', '3')
    >>> import datetime
    >>> shown_text(datetime.datetime(1995, 3, 1), "d mmmm yyyy")
    '1 March 1995'
"""

from __future__ import annotations

import calendar
import datetime
import functools
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = ["shown_text"]

# Excel's built-in "short date" and "short date and time" (ids 14 and 22), which it shows
# in the reader's locale: written as ISO 8601 rather than guessed.
_LOCALE_DATES = {"mm-dd-yy": "%Y-%m-%d", "m/d/yy h:mm": "%Y-%m-%d %H:%M"}
# Quoted text, an escaped character, a space the width of a character, a fill, a bracket.
_LITERAL = re.compile(r'"[^"]*"|\\.|_.|\*.|\[[^\]]*\]')
_DIGITS = "0#?"


def shown_text(value: Any, number_format: str | None = "General") -> Any:
    """``value`` as a cell with ``number_format`` shows it; text and empty cells as they are.

    Args:
        value: A cell's value as openpyxl reads it: a number, bool, date, datetime, time,
            timedelta, text or ``None``.
        number_format: The cell's number format (``cell.number_format``).

    Examples:
        >>> shown_text(-1234.5, '"$"#,##0.00_);("$"#,##0.00)')
        '($1,234.50)'
        >>> import datetime
        >>> shown_text(datetime.datetime(2026, 1, 2, 14, 5), "h:mm AM/PM")
        '2:05 PM'
        >>> shown_text(datetime.datetime(1995, 3, 1), "mm-dd-yy")  # the locale's short date
        '1995-03-01'
        >>> shown_text(True), shown_text("as typed", "0.00")
        ('TRUE', 'as typed')
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    fmt = (number_format or "General").strip()
    if isinstance(value, (datetime.date, datetime.time)):
        return _date_text(value, fmt)
    if isinstance(value, datetime.timedelta):
        return _elapsed_text(value, fmt)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return _number_text(value, fmt)
    return value


@functools.lru_cache(maxsize=256)  # a sheet has a few formats and many cells
def _sections(fmt: str) -> tuple[str, ...]:
    """A format's ``;``-separated sections (positive; negative; zero; text)."""
    sections, start = [], 0
    for match in re.finditer(r'"[^"]*"|\\.|;', fmt):
        if match.group() == ";":
            sections.append(fmt[start : match.start()])
            start = match.end()
    return (*sections, fmt[start:])


def _number_text(value: float, fmt: str) -> str:
    sections = _sections(fmt)
    if any(re.search(r"\[[<>=]", s) for s in sections):
        return _general(value)  # conditional sections ([>=1000]...): not read
    section, sign = sections[0], "-" if value < 0 else ""
    if value < 0 and len(sections) > 1:
        section, sign = sections[1], ""  # the negative section writes its own sign
    elif value == 0 and len(sections) > 2:
        section = sections[2]
    text = _with_number_format(abs(value), section)
    return _general(value) if text is None else sign + text


def _with_number_format(value: float, section: str) -> str | None:
    if section.strip().lower() in ("general", "", "@"):
        return _general(value)
    pieces = _pieces(section)
    codes = "".join(text for text, is_code in pieces if is_code)
    scientific = re.fullmatch(r"[#0]\.?([#0]*)[eE]([+-])(0+)", codes)
    if scientific:  # 0.00E+00 (engineering forms such as ##0.0E+0 are not read)
        return _scientific(value, *scientific.groups())
    if re.search(r"[eE][+-]|/|[ymdhs]", codes, re.IGNORECASE):
        return None  # fractions, engineering forms, or a date format on a plain number
    if not any(c in codes for c in _DIGITS):
        return "".join(text for text, _ in pieces).strip()  # all text: "-" for zero
    first = min(codes.index(c) for c in _DIGITS if c in codes)
    last = max(codes.rindex(c) for c in _DIGITS if c in codes)
    scale = len(codes[last + 1 :]) - len(codes[last + 1 :].lstrip(","))  # 0, = thousands
    value = value * 100 ** codes.count("%") / 1000**scale
    digits = _digits(value, codes[first : last + 1])
    out, position = [], 0
    for text, is_code in pieces:
        if not is_code:
            out.append(text)
            continue
        for char in text:
            if position == first:
                out.append(digits)
            elif not first <= position <= last + scale:
                out.append(char)  # $, -, (, %, spaces: shown as they are
            position += 1
    return "".join(out).strip()


def _scientific(value: float, places: str, plus: str, exponent: str) -> str:
    mantissa, power = f"{value:.{len(places)}E}".split("E")
    shown_sign = "-" if power.startswith("-") else "+" if plus == "+" else ""
    return f"{mantissa}E{shown_sign}{abs(int(power)):0{len(exponent)}d}"


@functools.lru_cache(maxsize=256)
def _pieces(section: str) -> tuple[tuple[str, bool], ...]:
    """The section as (text, is_code) pieces: literals resolved, codes kept to be filled."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in _LITERAL.finditer(section):
        pieces.append((section[position : match.start()], True))
        token = match.group()
        if token.startswith('"'):
            pieces.append((token[1:-1], False))
        elif token[0] == "\\":
            pieces.append((token[1], False))
        elif token[0] == "_":
            pieces.append((" ", False))
        elif token.startswith("[$"):  # a currency or locale tag: [$€-407] shows "€"
            pieces.append((token[2:-1].split("-")[0], False))
        position = match.end()  # fills and colours ([Red]) show nothing
    pieces.append((section[position:], True))
    return tuple((text, is_code) for text, is_code in pieces if text)


def _digits(value: float, run: str) -> str:
    """``value`` (not negative) written by a run of digit codes such as ``#,##0.00``."""
    whole, point, fraction = run.partition(".")
    places = sum(code in _DIGITS for code in fraction)
    kept = sum(code == "0" for code in fraction)
    exact = Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    integer, _, decimals = f"{exact:f}".partition(".")
    integer = integer.lstrip("0").rjust(whole.count("0"), "0")
    if "," in whole and integer:
        integer = f"{int(integer):,}"
    return integer + point + decimals.rstrip("0").ljust(kept, "0")


def _general(value: float) -> str:
    """Excel's General format: the number with up to 15 significant digits, as it keeps."""
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    text = f"{value:.15g}"
    if "e" in text:
        if 1e-9 <= abs(value) < 1e15:
            return f"{Decimal(text):f}"
        mantissa, exponent = text.split("e")
        return f"{mantissa}E{exponent[0]}{int(exponent[1:]):02d}"
    return text


def _date_text(value: datetime.date | datetime.time, fmt: str) -> str:
    moment = value
    if isinstance(value, datetime.time):
        moment = datetime.datetime.combine(datetime.date(1899, 12, 31), value)
    elif not isinstance(value, datetime.datetime):
        moment = datetime.datetime.combine(value, datetime.time())
    section = _sections(fmt)[0]
    if section.lower() in _LOCALE_DATES:
        return moment.strftime(_LOCALE_DATES[section.lower()])
    text = _with_date_format(moment, section)
    if text is not None:
        return text
    if isinstance(value, datetime.time):
        return value.isoformat()
    if moment.time() == datetime.time():
        return moment.date().isoformat()
    return moment.isoformat(sep=" ")


_DATE_CODE = re.compile(r"am/pm|a/p|y+|m+|d+|h+|s+(?:\.0+)?", re.IGNORECASE)


def _with_date_format(moment: datetime.datetime, section: str) -> str | None:
    if re.search(r"\[[hms]+\]", section, re.IGNORECASE):
        return None  # an elapsed time's format on a moment: not read
    pieces = _pieces(section)
    tokens: list[tuple[str, bool]] = []
    for text, is_code in pieces:
        if not is_code:
            tokens.append((text, False))
            continue
        position = 0
        for match in _DATE_CODE.finditer(text):
            tokens.append((text[position : match.start()], False))
            tokens.append((match.group(), True))
            position = match.end()
        tokens.append((text[position:], False))
    codes = [text.lower() for text, is_code in tokens if is_code]
    if not codes or any(c in text for text, is_code in tokens if not is_code for c in "0#?@"):
        return None
    twelve_hour = any(c in ("am/pm", "a/p") for c in codes)
    out = []
    for index, (text, is_code) in enumerate(tokens):
        if not is_code:
            out.append(text)
            continue
        out.append(_date_part(moment, text, _is_minutes(tokens, index), twelve_hour))
    return "".join(out).strip()


def _is_minutes(tokens: list[tuple[str, bool]], index: int) -> bool:
    """An ``m`` code is minutes after an hour code or before a seconds code, else a month."""
    if not tokens[index][0].lower().startswith("m"):
        return False
    codes = [(i, text.lower()) for i, (text, is_code) in enumerate(tokens) if is_code]
    before = [code for i, code in codes if i < index]
    after = [code for i, code in codes if i > index]
    return bool(before and before[-1][0] in "h[") or bool(after and after[0][0] == "s")


def _date_part(moment: datetime.datetime, code: str, minutes: bool, twelve_hour: bool) -> str:
    low = code.lower()
    if low in ("am/pm", "a/p"):
        marker = ("AM" if moment.hour < 12 else "PM")[: 2 if low == "am/pm" else 1]
        return marker if code[0].isupper() else marker.lower()
    hour = moment.hour % 12 or 12 if twelve_hour else moment.hour
    month, weekday = calendar.month_name[moment.month], calendar.day_name[moment.weekday()]
    forms = {  # by the code's length: m, mm, mmm, mmmm, mmmmm
        "y": [f"{moment.year % 100:02d}"] * 2 + [f"{moment.year:04d}"] * 2,
        "m": [str(moment.month), f"{moment.month:02d}", month[:3], month, month[0]],
        "minutes": [str(moment.minute), f"{moment.minute:02d}"],
        "d": [str(moment.day), f"{moment.day:02d}", weekday[:3], weekday],
        "h": [str(hour), f"{hour:02d}"],
        "s": [str(moment.second), f"{moment.second:02d}"],
    }["minutes" if minutes else low[0]]
    whole, _, places = low.partition(".")
    text = forms[min(len(whole), len(forms)) - 1]
    if places:  # ss.00: hundredths of a second
        text += f"{moment.microsecond / 1e6:.{len(places)}f}"[1:]
    return text


def _elapsed_text(value: datetime.timedelta, fmt: str) -> str:
    """A duration under an elapsed format (``[h]:mm:ss``): hours past 24 kept."""
    seconds = round(value.total_seconds())
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    section = _sections(fmt)[0].lower()
    if section.startswith("[h"):
        text = f"{hours}:{minutes:02d}"
        return sign + (text + f":{secs:02d}" if "s" in section else text)
    if section.startswith("[m"):
        return f"{sign}{seconds // 60}:{secs:02d}"
    return sign + str(value) if not sign else "-" + str(-value)
