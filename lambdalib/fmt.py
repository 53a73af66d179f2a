"""How numbers, durations, noise levels and tables read in everything lambdalib writes (one place each).

A missing value (None, NaN) reads "—" in number, percent, with_std and duration; no pandas or torch to import it.
"""
from __future__ import annotations

import math
import re

MISSING = "—"


def missing(value) -> bool:
    """None, NaN or pandas' NA: a value that was never measured."""
    try:
        return value is None or bool(value != value)  # NaN (float, numpy, pandas.NA raises -> treated below)
    except (TypeError, ValueError):
        return True


def number(value, digits: int = 3, signed: bool = False) -> str:
    """0.1234 -> '0.123'; exploded losses stay short ('1.23e+09'); '+' for signed differences."""
    if missing(value):
        return MISSING
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}f}" if abs(value) < 1e6 else f"{value:{sign}.{digits - 1}e}"


def percent(value, digits: int = 1) -> str:
    """0.8523 -> '85.2%'."""
    return MISSING if missing(value) else f"{100 * float(value):.{digits}f}%"


def with_std(mean, std, fmt=number) -> str:
    """'0.512 ± 0.031', or the mean alone when there is no spread."""
    text = fmt(mean)
    return text if missing(std) or missing(mean) else f"{text} ± {fmt(std)}"


def value(v) -> str:
    """A config value in a label: floats in %g (1e-06 and 1e+06 stay apart), the rest as str."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def noise(level: float) -> str:
    """0.25 -> '25 %'."""
    return f"{float(level) * 100:g} %"


def parse_duration(text: str | None) -> float:
    """'1h 32m 37s' -> 5557.0. The report sometimes drops the final 's' ('2h 22m 41'): read as seconds."""
    if missing(text) or not str(text).strip():
        return math.nan
    match = re.fullmatch(r"\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*", str(text))
    if not match or not any(match.groups()):
        raise ValueError(f"not a duration like '1h 32m 37s': {text!r}")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def duration(seconds: float | None) -> str:
    """5557 -> '1h 32m 37s' (the report's format; leading zero units dropped: '2m 5s', '9s')."""
    if missing(seconds) or not math.isfinite(float(seconds)):
        return MISSING
    hours, rest = divmod(int(round(float(seconds))), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def architecture(label: str, noise_level: float) -> str:
    """The report's row name: 'ResNet18(0%)', 'LR18_L2(rpe)(25%)'."""
    name = re.sub(r"^R(\d+)$", r"ResNet\1", label)
    return f"{name}({noise_level * 100:g}%)"


def markdown_table(frame, empty: str) -> str:
    """GitHub markdown for a frame of strings; columns of numbers are right-aligned."""
    if frame.empty:
        return f"_{empty}_\n"
    cells = frame.astype(str).map(lambda s: s.replace("|", "\\|"))
    numeric = [bool(cells[c].str.match(r"^(?:[-+\d—]|missing$)").all()) for c in cells.columns]
    lines = ["| " + " | ".join(frame.columns) + " |",
             "|" + "|".join("---:" if right else ":---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"
