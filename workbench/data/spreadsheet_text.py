"""The text a spreadsheet cell shows: its value under its number format.

A workbook stores a number and a format; the person who typed ``25%``, ``3.50``, ``1,234`` or
``1995-03-01`` sees that, and expects to train on it, not on ``0.25``, ``3.5`` or
``1995-03-01T00:00:00``. :func:`shown_text` writes the formats as Excel does: fixed and
optional decimals, thousands separators and scaling, percents, scientific notation, digits
laid out with text between them (``000-00-0000``), currency and other literal text, negative,
zero and text sections, empty (hidden) sections, conditions (``[>=1000]``), TRUE and FALSE,
dates and times (numbers and names of months and days, 12-hour clocks, fractions of a
second) and elapsed times (``[h]:mm``). Numbers show at most 15 significant digits, and round
half away from zero, as Excel's do. The locale's short date (the built-in format Excel shows as
``3/1/1995`` in one country and ``01/03/1995`` in another) is written as ISO 8601, since the
workbook does not say which locale it was shown in. A format it does not read (fractions,
engineering notation) gives the value's plain text, as does any format it cannot apply.

Checked against LibreOffice's own rendering of some 4,700 cells (values and formats of every
kind): the differences left are padding (``_)``), locale dates and the forms above.

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
import decimal
import functools
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = ["shown_text"]

# Excel's built-in "short date" and "short date and time" (ids 14 and 22), which it shows
# in the reader's locale: written as ISO 8601 rather than guessed.
_LOCALE_DATES = {"mm-dd-yy": "%Y-%m-%d", "m/d/yy h:mm": "%Y-%m-%d %H:%M"}
# openpyxl 3.1's table of built-in formats has two strings wrong (id 44 lost its section
# separators, id 47 its colon): a workbook that names those ids gets these from it.
_OPENPYXL_BUILTIN_FIXES = {
    '_("$"* #,##0.00_)_("$"* \\(#,##0.00\\)_("$"* "-"??_)_(@_)': (
        '_("$"* #,##0.00_);_("$"* \\(#,##0.00\\);_("$"* "-"??_);_(@_)'
    ),
    "mmss.0": "mm:ss.0",
}
# Quoted text, an escaped character, a space the width of a character, a fill, a bracket.
_LITERAL = re.compile(r'"[^"]*"?|\\.|_.?|\*.?|\[[^\]]*\]?')
_ELAPSED = re.compile(r"\[(h+|m+|s+)\]", re.IGNORECASE)
_CONDITION = re.compile(r"\[(<=|>=|<>|<|>|=)\s*(-?\d+(?:\.\d*)?)\]")
_DIGITS = "0#?"
_ENOUGH_DIGITS = decimal.Context(prec=400)  # any format's places on any float


def shown_text(value: Any, number_format: str | None = "General") -> Any:
    """``value`` as a cell with ``number_format`` shows it; empty cells as they are.

    Args:
        value: A cell's value as openpyxl reads it: a number, bool, date, datetime, time,
            timedelta, text or ``None``.
        number_format: The cell's number format (``cell.number_format``).

    Examples:
        >>> shown_text(-1234.5, '"$"#,##0.00_);("$"#,##0.00)')
        '($1,234.50)'
        >>> shown_text(123456789, "000-00-0000"), shown_text(-5, "0;;"), shown_text(7, "0,000")
        ('123-45-6789', '', '0,007')
        >>> import datetime
        >>> shown_text(datetime.datetime(2026, 1, 2, 14, 5), "h:mm AM/PM")
        '2:05 PM'
        >>> shown_text(datetime.datetime(1995, 3, 1), "mm-dd-yy")  # the locale's short date
        '1995-03-01'
        >>> shown_text(True), shown_text("as typed", "0.00"), shown_text("x", '"<"@">"')
        ('TRUE', 'as typed', '<x>')
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    fmt = str(number_format or "General")
    fmt = _OPENPYXL_BUILTIN_FIXES.get(fmt, fmt)
    try:
        shown = _formatted(value, fmt)
    except (ArithmeticError, ValueError, IndexError):
        shown = None  # a format it cannot apply (30 nested percents...)
    return _plain(value) if shown is None else shown


def _formatted(value: Any, fmt: str) -> str | None:
    if isinstance(value, str):
        return _text_text(value, fmt)
    if isinstance(value, (datetime.date, datetime.time)):
        return _date_text(value, fmt)
    if isinstance(value, datetime.timedelta):
        return _elapsed_text(value, fmt)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return _number_text(value, fmt)
    return None


def _plain(value: Any) -> Any:
    """The value's own text: what a format this module does not read shows."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return _general(value)
    if isinstance(value, datetime.datetime):
        moment = value.isoformat(sep=" ")
        return value.date().isoformat() if value.time() == datetime.time() else moment
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
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


@functools.lru_cache(maxsize=256)
def _pieces(section: str) -> tuple[tuple[str, bool], ...]:
    """The section as (text, is_code) pieces: literals resolved, codes kept to be filled.
    Elapsed-time codes (``[h]``) are codes; colours, locales and conditions show nothing."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for match in _LITERAL.finditer(section):
        pieces.append((section[position : match.start()], True))
        token = match.group()
        if token.startswith('"'):
            pieces.append((token[1:].removesuffix('"'), False))
        elif token[0] == "\\":
            pieces.append((token[1], False))
        elif token[0] == "_":
            pieces.append((" ", False))
        elif _ELAPSED.fullmatch(token):
            pieces.append((token, True))
        elif token.startswith("[$"):  # a currency or locale tag: [$€-407] shows "€"
            pieces.append((token[2:].removesuffix("]").split("-")[0], False))
        position = match.end()  # fills and colours ([Red]) show nothing
    pieces.append((section[position:], True))
    return tuple((text, is_code) for text, is_code in pieces if text)


def _text_text(value: str, fmt: str) -> str:
    """Text under a format with a text section (``@``): placed in its literal text."""
    sections = _sections(fmt)
    section = sections[3] if len(sections) > 3 else sections[0] if len(sections) == 1 else ""
    pieces = _pieces(section)
    if not any(is_code and "@" in text for text, is_code in pieces):
        return value
    shown = "".join(text.replace("@", value) if is_code else text for text, is_code in pieces)
    return shown if value != value.strip() else shown.strip()


# --- numbers ------------------------------------------------------------------------------


def _number_text(value: float, fmt: str) -> str:
    section, sign = _number_section(value, _sections(fmt))
    if not section:
        return ""  # an empty section hides the value (;;; hides them all)
    exact = Decimal(f"{abs(value):.15g}")  # Excel keeps 15 significant digits
    text = _with_number_format(exact, section)
    return _plain(value) if text is None else sign + text


def _number_section(value: float, sections: tuple[str, ...]) -> tuple[str, str]:
    """The section a number shows under, and the sign to put before it (none where the
    section writes its own: a negative section, a condition)."""
    conditions = [_CONDITION.search(s) for s in sections[:2]]
    if any(conditions):
        for section, condition in zip(sections, conditions, strict=False):
            if condition and _holds(value, *condition.groups()):
                return _CONDITION.sub("", section, count=1), ""
        unconditional = [
            s for s, c in zip(sections, [*conditions, None, None], strict=False) if not c
        ]
        rest = unconditional[:1]
        return (rest[0] if rest else sections[-1]), "-" if value < 0 else ""
    if value < 0 and len(sections) > 1:
        return sections[1], ""
    if value == 0 and len(sections) > 2:
        return sections[2], ""
    return sections[0], "-" if value < 0 else ""


def _holds(value: float, operator: str, bound: str) -> bool:
    limit = float(bound)
    return {
        "<": value < limit, ">": value > limit, "=": value == limit,
        "<=": value <= limit, ">=": value >= limit, "<>": value != limit,
    }[operator]  # fmt: skip


def _with_number_format(value: Decimal, section: str) -> str | None:
    """``value`` (not negative) under one section; ``None`` for a form it does not read."""
    if section.strip().lower() == "general":
        return _general(value)
    pieces = _pieces(section)
    # each code character apart, each literal text whole
    chars = [(c, code) for t, code in pieces for c in (t if code else [t])]
    codes = "".join(c for c, code in chars if code)
    if not any(c in codes for c in _DIGITS):
        if "@" in codes:
            return _general(value)  # a text format on a number: shown as General
        return "".join(text for text, _ in pieces).strip()  # all text: "-" for zero
    scientific = re.search(r"[eE][+-]", codes)
    if scientific:
        shape = re.fullmatch(r"[#0]\.?([#0]*)[eE]([+-])(0+)", codes.strip())
        return None if shape is None else _scientific(value, *shape.groups())
    if re.search(r"/|[ymdhs]", codes, re.IGNORECASE):
        return None  # fractions, or a date format on a plain number
    return _filled(value, chars)


def _filled(value: Decimal, chars: list[tuple[str, bool]]) -> str:
    """The section's characters with its digit placeholders filled, as Excel lays them
    out: integer digits from the right (the leftmost placeholder takes any more), then the
    decimals; ``0`` shows a zero where there is no digit, ``#`` nothing, ``?`` a space."""
    places = [i for i, (c, code) in enumerate(chars) if code and c in _DIGITS]
    point = next((i for i, (c, code) in enumerate(chars) if code and c == "."), None)
    whole = [i for i in places if point is None or i < point]
    fraction = [i for i in places if point is not None and i > point]
    grouped = bool(whole) and any(code and c == "," for c, code in chars[whole[0] : whole[-1]])
    scale = _trailing_commas(chars, whole[-1] if whole else None)
    scale += _trailing_commas(chars, places[-1]) if fraction else 0
    percent = sum(1 for c, code in chars if code and c == "%")
    with decimal.localcontext(_ENOUGH_DIGITS):
        scaled = value * Decimal(100) ** percent / Decimal(1000) ** scale
        rounded = scaled.quantize(Decimal(1).scaleb(-len(fraction)), ROUND_HALF_UP)
    integer, _, decimals = f"{rounded:f}".partition(".")
    shown = _whole_digits(integer.lstrip("0"), [chars[i][0] for i in whole], grouped)
    for k, text in _decimal_digits(decimals, [chars[i][0] for i in fraction]).items():
        shown[len(whole) + k] = text
    by_place = dict(zip(whole + fraction, [shown.get(k) for k in range(len(places))], strict=True))
    if not whole and integer.lstrip("0") and point is not None:  # ".00" with 12.5
        by_place[point] = integer.lstrip("0") + "."
    out = []
    for i, (c, code) in enumerate(chars):
        if i in by_place:
            out.append(by_place[i] or "")
        elif not code or c not in ",":
            out.append(c)  # literal text, the point, %, $, -, (, spaces: as they are
    return "".join(out).strip()


def _trailing_commas(chars: list[tuple[str, bool]], after: int | None) -> int:
    """Commas right after a digit placeholder: each divides the number by a thousand."""
    if after is None:
        return 0
    count = 0
    for c, code in chars[after + 1 :]:
        if not (code and c == ","):
            break
        count += 1
    return count


def _whole_digits(digits: str, codes: list[str], grouped: bool) -> dict[int, str]:
    """The integer part over its placeholders (by their order among all placeholders)."""
    if not codes:
        return {}
    if grouped:  # "#,##0": the whole number at the first placeholder, grouped by three
        padded = digits.rjust(codes.count("0"), "0")
        return {0: _regroup(padded) if padded else "", **dict.fromkeys(range(1, len(codes)), "")}
    shown: dict[int, str] = {}
    left = digits
    for k in range(len(codes) - 1, -1, -1):
        if k == 0:
            shown[k] = left or _empty_digit(codes[k])
        else:
            shown[k] = left[-1] if left else _empty_digit(codes[k])
            left = left[:-1]
    return shown


def _regroup(digits: str) -> str:
    """``0007`` as ``0,007``: thousands separators that keep leading zeros."""
    head = len(digits) % 3 or 3
    groups = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return ",".join(groups)


def _decimal_digits(decimals: str, codes: list[str]) -> dict[int, str]:
    """The decimals over their placeholders, by their order among the decimal ones."""
    shown: dict[int, str] = {}
    trailing = True  # zeros at the end show only under "0" (a space under "?")
    for k in range(len(codes) - 1, -1, -1):
        digit = decimals[k]
        if trailing and digit == "0" and codes[k] != "0":
            shown[k] = _empty_digit(codes[k])
        else:
            trailing, shown[k] = False, digit
    return shown


def _empty_digit(code: str) -> str:
    return {"0": "0", "#": "", "?": " "}[code]


def _scientific(value: Decimal, places: str, plus: str, exponent: str) -> str:
    """``value`` as ``1.23E+04``, its mantissa rounded half away from zero."""
    power = value.adjusted() if value else 0
    with decimal.localcontext(_ENOUGH_DIGITS):
        quantum = Decimal(1).scaleb(-len(places))
        mantissa = value.scaleb(-power).quantize(quantum, ROUND_HALF_UP)
        if mantissa >= 10:  # 9.995 -> 10.00: one more power of ten
            power += 1
            mantissa = value.scaleb(-power).quantize(quantum, ROUND_HALF_UP)
    shown_sign = "-" if power < 0 else "+" if plus == "+" else ""
    return f"{mantissa:f}E{shown_sign}{abs(power):0{len(exponent)}d}"


def _general(value: float | Decimal) -> str:
    """Excel's General format: the number with up to 15 significant digits, as it keeps."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    text = f"{number:.15g}"
    if "e" in text:
        if 1e-9 <= abs(number) < 1e15:
            return f"{Decimal(text):f}"
        mantissa, exponent = text.split("e")
        return f"{mantissa}E{exponent[0]}{int(exponent[1:]):02d}"
    return text


# --- dates, times and durations ----------------------------------------------------------

_DATE_CODE = re.compile(r"am/pm|a/p|\[(?:h+|m+|s+)\]|y+|m+|d+|h+|s+(?:\.0+)?|\.0+", re.IGNORECASE)


def _date_text(value: datetime.date | datetime.time, fmt: str) -> str:
    moment = value
    if isinstance(value, datetime.time):
        moment = datetime.datetime.combine(datetime.date(1899, 12, 31), value)
    elif not isinstance(value, datetime.datetime):
        moment = datetime.datetime.combine(value, datetime.time())
    section = _sections(fmt)[0]
    if section.strip().lower() in _LOCALE_DATES:
        return moment.strftime(_LOCALE_DATES[section.strip().lower()])
    text = _with_date_format(moment, section)
    return _plain(value) if text is None else text


def _date_tokens(section: str) -> list[tuple[str, bool]]:
    tokens: list[tuple[str, bool]] = []
    for text, is_code in _pieces(section):
        if not is_code:
            tokens.append((text, False))
            continue
        position = 0
        for match in _DATE_CODE.finditer(text):
            tokens.append((text[position : match.start()], False))
            tokens.append((match.group(), True))
            position = match.end()
        tokens.append((text[position:], False))
    return [(text, is_code) for text, is_code in tokens if text]


def _with_date_format(moment: datetime.datetime, section: str) -> str | None:
    tokens = _date_tokens(section)
    codes = [text.lower() for text, is_code in tokens if is_code]
    literal = "".join(text for text, is_code in tokens if not is_code)
    if not codes or any(c in literal for c in "0#?@") or any(c[0] == "[" for c in codes):
        return None  # a number format, or an elapsed one, on a date
    moment = _rounded_to_seconds_shown(moment, codes)
    twelve_hour = any(c in ("am/pm", "a/p") for c in codes)
    out = []
    for index, (text, is_code) in enumerate(tokens):
        if not is_code:
            out.append(text)
            continue
        out.append(_date_part(moment, text, _is_minutes(tokens, index), twelve_hour))
    return "".join(out).strip()


def _fraction_places(codes: list[str]) -> int | None:
    """Places of the seconds' fraction shown (``ss.00``: 2), ``None`` without seconds."""
    shows_seconds = any(c.lstrip("[").startswith("s") for c in codes)
    fractions = [len(c.partition(".")[2]) for c in codes if "." in c]
    return max(fractions, default=0) if shows_seconds or fractions else None


def _rounded_to_seconds_shown(moment: datetime.datetime, codes: list[str]) -> datetime.datetime:
    """Seconds shown round half up, carrying into the minutes (59.96 s as ``ss.0`` is a
    minute on); without seconds shown, the time is cut at the minute, as Excel does."""
    places = _fraction_places(codes)
    if places is None:
        return moment
    step = 10 ** (6 - places)  # microseconds
    rounded = (moment.microsecond + step // 2) // step * step
    return moment.replace(microsecond=0) + datetime.timedelta(microseconds=rounded)


def _is_minutes(tokens: list[tuple[str, bool]], index: int) -> bool:
    """An ``m`` code is minutes after an hour code or before a seconds code, else a month."""
    if not tokens[index][0].lower().startswith("m"):
        return False
    codes = [(i, text.lower().lstrip("[")) for i, (text, is_code) in enumerate(tokens) if is_code]
    before = [code for i, code in codes if i < index]
    after = [code for i, code in codes if i > index and not code.startswith(".")]
    return bool(before and before[-1][0] == "h") or bool(after and after[0][0] == "s")


def _date_part(moment: datetime.datetime, code: str, minutes: bool, twelve_hour: bool) -> str:
    low = code.lower()
    if low in ("am/pm", "a/p"):
        marker = ("AM" if moment.hour < 12 else "PM")[: 2 if low == "am/pm" else 1]
        return marker if code[0].isupper() else marker.lower()
    if low.startswith("."):  # the fraction after a seconds code with text between
        return f"{moment.microsecond / 1e6:.{len(low) - 1}f}"[1:]
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


def _elapsed_text(value: datetime.timedelta, fmt: str) -> str | None:
    """A duration under an elapsed format (``[h]:mm:ss``, ``[mm]:ss``, ``[ss].00``): the
    bracketed unit counts the whole duration, the units after it what is left over."""
    tokens = _date_tokens(_sections(fmt)[0])
    codes = [text.lower() for text, is_code in tokens if is_code]
    if not any(c.startswith("[") for c in codes):
        return None
    places = _fraction_places(codes)
    seconds = Decimal(str(value.total_seconds()))
    if places is None:  # no seconds shown: cut at the minute, as a time of day is
        seconds, places = Decimal(int(seconds)), 0
    seconds = seconds.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    whole = int(seconds)
    fraction = f"{seconds - whole:.{places}f}"[1:] if places else ""
    out = []
    for index, (text, is_code) in enumerate(tokens):
        low = text.lower()
        if not is_code:
            out.append(text)
        elif low.startswith("["):
            unit = {"h": 3600, "m": 60, "s": 1}[low[1]]
            out.append(str(whole // unit).rjust(len(low) - 2, "0"))
        elif low.startswith("m") and _is_minutes(tokens, index):
            out.append(str(whole // 60 % 60).rjust(min(len(low), 2), "0"))
        elif low.startswith("s"):
            out.append(str(whole % 60).rjust(min(len(low.partition(".")[0]), 2), "0"))
            out.append(fraction if "." in low else "")
        elif low.startswith("."):
            out.append(fraction)
        elif low.startswith("h"):
            out.append(str(whole // 3600 % 24).rjust(min(len(low), 2), "0"))
        else:
            return None  # days, months or years of a duration: not read
    return sign + "".join(out).strip()
