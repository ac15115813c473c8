"""argparse types the command lines share: whole numbers of at least a minimum, numbers in a range."""

from __future__ import annotations

import argparse


def at_least(minimum: int):
    """An argparse type: a whole number of at least ``minimum`` (argparse names the option beside the message)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (expected one of at least {minimum})") \
                from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: expected a whole number of at least {minimum}")
        return value

    whole_number.__name__ = f"whole number of at least {minimum}"
    return whole_number


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An argparse type: a number between ``low`` and ``high`` (``*_open``: that end excluded)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low < value if low_open else low <= value) or not (value < high if high_open else value <= high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number in {'(' if low_open else '['}{low:g}, "
                                             f"{high:g}{')' if high_open else ']'}")
        return value

    return number
