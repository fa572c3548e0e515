"""What the fuzzing tests ran and what they found, printed at the end of the session.

Each fuzz case records its area (``api unary``, ``agent stream``, ``cli``...), the
identity it ran as and its outcome (a status code, or the CLI's exit code); a case
that broke a rule records it too, before the test fails. ``tests/conftest.py`` prints
the tally after the test summary, so every ``make test`` says how many cases ran, in
how long, and that they found nothing (or what).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time


@dataclasses.dataclass
class _Area:
    cases: int = 0
    outcomes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    identities: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0
    last: float | None = None


_AREAS: dict[str, _Area] = {}
_FINDINGS: dict[str, str] = {}
# Longer than this between two cases of an area is time spent elsewhere (fixtures,
# other tests), not fuzzing.
_GAP = 30.0


# Every case's answer, one line each, when this names a file (to look at what the
# fuzzer reaches: ARCHIPEL_FUZZ_LOG=/tmp/fuzz.log pytest tests/integration/test_api_fuzz.py).
_LOG = os.environ.get("ARCHIPEL_FUZZ_LOG", "")


# More (or fewer) cases than ``make test`` runs: ARCHIPEL_FUZZ_SCALE=10 for a long hunt.
_SCALE = float(os.environ.get("ARCHIPEL_FUZZ_SCALE", "1"))


def scaled(cases: int) -> int:
    """``cases`` times ARCHIPEL_FUZZ_SCALE (at least one)."""
    return max(1, round(cases * _SCALE))


def record(area: str, outcome: str, *, identity: str = "", detail: str = "") -> None:
    """One case of ``area`` ran, with ``outcome`` (and ``detail``, for the log)."""
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"{area}\t{identity}\t{outcome}\t{' '.join(detail.split())[:300]}\n")
    now = time.monotonic()
    tally = _AREAS.setdefault(area, _Area())
    if tally.last is not None and now - tally.last < _GAP:
        tally.seconds += now - tally.last
    tally.last = now
    tally.cases += 1
    tally.outcomes[outcome] += 1
    if identity:
        tally.identities[identity] += 1


def finding(kind: str, example: str) -> None:
    """A case broke a rule (the test fails with it too): ``kind`` says which rule where
    (the same kind from many shrunk cases is one finding), ``example`` shows a case."""
    _FINDINGS.setdefault(kind, example[:300])


def summary() -> list[str]:
    """The lines to print; none when no fuzz test ran."""
    if not _AREAS:
        return []
    total = sum(area.cases for area in _AREAS.values())
    seconds = sum(area.seconds for area in _AREAS.values())
    lines = [f"{total} fuzz cases in {seconds:.0f} s of fuzzing"]
    for name, area in sorted(_AREAS.items()):
        outcomes = ", ".join(f"{code} {count}" for code, count in area.outcomes.most_common())
        lines.append(f"  {name}: {area.cases} cases in {area.seconds:.0f} s: {outcomes}")
        if area.identities:
            who = ", ".join(f"{name} {count}" for name, count in sorted(area.identities.items()))
            lines.append(f"    as {who}")
    if _FINDINGS:
        lines.append(f"  {len(_FINDINGS)} findings:")
        for kind, example in list(_FINDINGS.items())[:20]:
            lines.append(f"    {kind}")
            lines.append(f"      e.g. {example}")
    else:
        lines.append(
            "  findings: none (no crash, no UNKNOWN or INTERNAL, every INVALID_ARGUMENT "
            "named its field, every CLI error was one line)"
        )
    return lines
