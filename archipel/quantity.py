"""Kubernetes resource quantities ("100m", "1.5Gi", "2e3") as exact fractions.

The one parser and the one formatter of quantities, shared by the control plane,
the agent and the CLI (so this module imports neither of them).

:func:`parse` accepts the grammar of Kubernetes' ``resource.Quantity``::

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= <number> | <sign><number>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

with ASCII digits only and no whitespace anywhere (``ParseQuantity`` refuses
``" 1"`` and ``"1 "``). Two deliberate differences from the Go implementation:

* A number needs at least one digit. Go's scanner reads a missing number as zero, so
  it takes ``"Ki"``, ``"e3"``, ``"m"``, ``"-"`` or ``"."`` for 0; the documented
  grammar above does not, and neither do we.
* The value is exact. Kubernetes rounds a sub-nano remainder up when it parses
  (``"0.1n"`` is 1n); :func:`canonical` applies that rounding when it formats.

Exponents beyond ±``MAX_EXPONENT`` are refused: no resource is that large or that
small, and an exact 10**(2**31) would take the process down.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["MAX_EXPONENT", "QuantityError", "canonical", "parse"]

MAX_EXPONENT = 1000

_DECIMAL_SUFFIXES = {
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
}  # fmt: skip
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)"
    r"(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<suffix>[KMGTPE]i|[numkMGTPE]))?"
)

# Canonical form: the largest suffix that keeps the value exact, nano at the bottom.
_NANO = 10**9
_DECIMAL_BY_EXPONENT = {exponent: suffix for suffix, exponent in _DECIMAL_SUFFIXES.items()}
_BINARY_LARGEST_FIRST = sorted(_BINARY_SUFFIXES.items(), key=lambda item: -item[1])


class QuantityError(ValueError):
    """Not a Kubernetes quantity; the message starts with the field's path."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


def parse(text: str | int | float, *, field: str = "quantity") -> Fraction:
    """The exact value of a quantity ("1.5Gi", "100m", "1e3"), or :class:`QuantityError`.

    An int is taken as it is; a float (YAML's ``cpu: 0.5``) as the decimal it is
    written as, as Kubernetes reads the number in a JSON document.
    """
    if isinstance(text, bool):
        raise QuantityError(field, f"{text!r} is not a Kubernetes quantity")
    if isinstance(text, int):
        return Fraction(text)
    if isinstance(text, float):
        if not math.isfinite(text):
            raise QuantityError(field, f"{text!r} is not a Kubernetes quantity")
        text = repr(text)
    if not isinstance(text, str):
        raise QuantityError(field, f"{text!r} is not a Kubernetes quantity")
    match = _QUANTITY.fullmatch(text)
    if match is None or not (match["whole"] or match["fraction"]):
        raise QuantityError(field, f"{text!r} is not a Kubernetes quantity")
    whole, fraction = match["whole"], match["fraction"] or ""
    value = Fraction(int(whole + fraction or "0"), 10 ** len(fraction))
    if match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > MAX_EXPONENT:
            raise QuantityError(field, f"{text!r}: the exponent is out of range")
        value *= Fraction(10) ** exponent
    elif match["suffix"] in _BINARY_SUFFIXES:
        value *= 2 ** _BINARY_SUFFIXES[match["suffix"]]
    else:
        value *= Fraction(10) ** _DECIMAL_SUFFIXES[match["suffix"] or ""]
    return -value if match["sign"] == "-" else value


def canonical(value: Fraction | int) -> str:
    """The canonical Kubernetes string of a value, which :func:`parse` reads back.

    Decimal with the largest SI suffix that keeps the value exact ("1k", "1500m",
    "250u", "1T"), or, for a whole number of Ki, the largest binary suffix that
    divides it ("2Gi", "1536Mi") when that is no longer than the decimal form (so
    10**12 stays "1T", not "976562500Ki"). A remainder below one nano is rounded up,
    away from zero, as Kubernetes rounds ("0.1n" is "1n").
    """
    value = Fraction(value)
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    nanos = math.ceil(abs(value) * _NANO)
    binary = ""
    if nanos % _NANO == 0 and (nanos // _NANO) % 1024 == 0:
        whole = nanos // _NANO
        for suffix, exponent in _BINARY_LARGEST_FIRST:
            if whole % (1 << exponent) == 0:
                binary = f"{sign}{whole >> exponent}{suffix}"
                break
    exponent = -9
    while nanos % 1000 == 0 and exponent < 18:
        nanos //= 1000
        exponent += 3
    decimal = f"{sign}{nanos}{_DECIMAL_BY_EXPONENT[exponent]}"
    return binary if binary and len(binary) <= len(decimal) else decimal
