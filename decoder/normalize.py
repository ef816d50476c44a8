"""English text normalisation for word error rates (in the spirit of Whisper's normaliser).

Lower case; bracketed and parenthesised asides removed; numbers written in digits
spelled out as words (years such as 1961 as "nineteen sixty one"); punctuation
removed except apostrophes inside words; whitespace collapsed; each word in one spelling
(decoder/spelling.py: British spellings as American, titles written out).
"""
from __future__ import annotations

import re

from decoder.spelling import american

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """Cardinal English words for a non-negative integer."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{number_words(head)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)


def _spell(match: re.Match) -> str:
    digits = match.group(0).replace(",", "")
    n = int(digits)
    if len(digits) == 4 and 1100 <= n <= 2099 and n % 100 and not 2000 <= n <= 2009:
        return f"{number_words(n // 100)} {number_words(n % 100)}"        # a year: 1961, 2024
    return number_words(n)


def normalize(text: str) -> str:
    """Normalised English text for scoring."""
    text = text.lower()
    text = re.sub(r"[<\[][^>\]]*[>\]]|\([^)]*\)", " ", text)            # asides and tags
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)                        # 1,000 -> 1000
    text = re.sub(r"\d+", _spell, text)
    text = re.sub(r"%", " percent", text)
    text = re.sub(r"[^\w\s']", " ", text)                                # punctuation, hyphens
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)                        # quotes, not contractions
    return " ".join(american(word) for word in text.split())
