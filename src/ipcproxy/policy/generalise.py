"""Turning the values seen for one argument (or path) into a constraint.

Up to ``threshold`` distinct values stay an exact set. Past it, the learner
assumes the set is open and generalises: numbers to a range widened by the
average gap between the values seen (the usual estimate of where unseen
values of the same kind fall), strings to a pattern (common prefix and suffix
cut at a separator, the character classes seen in between) with a length
bound, arrays and dicts to a size bound.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .model import ArgConstraint, canonical


def distinct(values: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(canonical(value), value)
    return [seen[key] for key in sorted(seen)]


def constraint(values: list[Any], threshold: int) -> ArgConstraint | None:
    """The tightest sensible constraint for these observed values (None: no sensible one)."""
    unique = distinct(values)
    if len(unique) <= threshold:
        return ArgConstraint(values=unique)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in unique):
        return ArgConstraint(range=number_range(unique))
    if all(isinstance(v, str) for v in unique):
        return ArgConstraint(pattern=string_pattern(unique), max_len=size_bound(max(len(v) for v in unique)))
    if all(isinstance(v, list | dict) for v in unique):
        return ArgConstraint(max_len=size_bound(max(len(v) for v in unique)))
    return None


def number_range(values: list[int | float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    slack = (high - low) / (len(values) - 1) if len(values) > 1 else 0
    lo, hi = low - slack, high + slack
    if low >= 0 > lo:
        lo = 0  # never learn a sign that was not seen
    if all(isinstance(v, int) for v in values):
        return (math.floor(lo), math.ceil(hi))
    return (math.floor(lo * 1000) / 1000, math.ceil(hi * 1000) / 1000)


def size_bound(longest: int) -> int:
    """The next power of two: room for growth, without accepting anything at all."""
    bound = 1
    while bound < longest:
        bound *= 2
    return bound


def _cut_prefix(prefix: str) -> str:
    for i in range(len(prefix) - 1, -1, -1):
        if not prefix[i].isalnum():
            return prefix[: i + 1]
    return ""


def _cut_suffix(suffix: str) -> str:
    for i, ch in enumerate(suffix):
        if not ch.isalnum():
            return suffix[i:]
    return ""


def string_pattern(values: list[str]) -> str:
    prefix = _cut_prefix(os.path.commonprefix(values))
    suffix = _cut_suffix(os.path.commonprefix([v[::-1] for v in values])[::-1])
    shortest = min(len(v) for v in values)
    if len(prefix) + len(suffix) > shortest:
        suffix = ""
    middles = [v[len(prefix) : len(v) - len(suffix)] for v in values]
    classes: list[str] = []
    chars = set("".join(middles))
    for name, test in (("a-z", str.islower), ("A-Z", str.isupper), ("0-9", str.isdigit)):
        if any(c.isascii() and test(c) for c in chars):
            classes.append(name)
    others = sorted(c for c in chars if not (c.isascii() and c.isalnum()))
    classes += ["\\" + c if c in _CLASS_SPECIAL else c for c in others]
    quantifier = "+" if all(middles) else "*"
    middle = f"[{''.join(classes)}]{quantifier}" if classes else ""
    return _literal(prefix) + middle + _literal(suffix)


_SPECIAL = set(".^$*+?{}[]\\|()")
_CLASS_SPECIAL = set("\\]^-[")


def _literal(text: str) -> str:
    """Escape only what a regular expression treats specially, so patterns stay readable."""
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def path_generalisation(paths: list[str], threshold: int) -> tuple[tuple[str, ...] | None, str | None]:
    """Exact paths while there are few; a prefix (cut at a '/') past the threshold."""
    unique = sorted(set(paths))
    if len(unique) <= threshold:
        return tuple(unique), None
    prefix = os.path.commonprefix(unique)
    prefix = prefix[: prefix.rfind("/") + 1] or "/"
    return None, prefix


_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
_CLASS_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def is_text(data: bytes) -> bool:
    """Printable ASCII and the usual whitespace: what a regular expression of character classes can say."""
    return all(b in _TEXT_BYTES for b in data)


def char_classes(chars: set[str]) -> str:
    """``[a-z0-9\\n]``-style class of the characters seen (whole ranges for letters and digits)."""
    classes: list[str] = []
    for name, test in (("a-z", str.islower), ("A-Z", str.isupper), ("0-9", str.isdigit)):
        if any(c.isascii() and test(c) for c in chars):
            classes.append(name)
    for c in sorted(c for c in chars if not (c.isascii() and c.isalnum())):
        classes.append(_CLASS_ESCAPES.get(c) or ("\\" + c if c in _CLASS_SPECIAL else c))
    return f"[{''.join(classes)}]" if classes else ""


def payload_generalisation(payloads: list[bytes], with_prefix: bool) -> tuple[bytes | None, str | None]:
    """(prefix, regex) for the payloads of one rule.

    Text becomes the character classes seen (``[a-z0-9 \\n]*``: any text of
    the same kind, never the exact bytes, which change from run to run); a
    prefix common to at least two different messages (cut back to a
    separator in text) is taken to be a fixed header. ``with_prefix`` is false
    for reads of a byte stream, which may start in the middle of a message.
    """
    samples = [p for p in payloads if p]
    if not samples:
        return None, None
    text = all(is_text(p) for p in samples)
    prefix: bytes | None = None
    distinct = sorted(set(samples))
    if with_prefix and len(distinct) >= 2:
        common: bytes = os.path.commonprefix(distinct)  # type: ignore[assignment]
        if text:
            common = _cut_prefix(common.decode("ascii")).encode("ascii")
        prefix = common or None
    regex = None
    if text:
        chars = set("".join(p.decode("ascii") for p in samples))
        regex = char_classes(chars) + "*"
    return prefix, regex
