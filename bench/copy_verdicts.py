"""Copy / not-copy verdicts: a threshold chosen on the tuning half, judged on the held-out half.

Shared by bench/copy_scale.py (every hash method's nearest distance) and bench/copy_verify.py
(the verification score). A verdict says "copy of this original"; it is right when the query
is a copy and the original named is one of its right answers. Precision = right verdicts /
verdicts; recall = right verdicts / copies (as ISC2021 reports recall at a precision).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]

HEADER = (
    "| method | threshold | held-out precision | held-out recall | wrong verdicts |\n"
    "| --- | --- | --- | --- | --- |"
)


def threshold_for(scores: Floats, correct: NDArray[np.bool_], precision: float) -> float:
    """The lowest threshold whose verdicts (score >= it) reach `precision` on this half (the
    most recall at that precision)."""
    for t in np.sort(np.unique(scores)):
        kept = correct[scores >= t]
        if len(kept) and kept.mean() >= precision:
            return float(t)
    return float("inf")


def verdict_row(name: str, scores: Floats, correct: NDArray[np.bool_], is_copy: NDArray[np.bool_],
                tune: NDArray[np.bool_], precision: float, sign: int = 1,
                fixed: float | None = None) -> str:  # fmt: skip
    """Threshold on the tuning half (or `fixed`); precision and recall at it on the held-out
    half.

    Verdict: copy when sign * score >= sign * threshold (sign -1: a distance, lower = copy)."""
    if fixed is None:
        t = threshold_for(sign * scores[tune], correct[tune], precision)
    else:
        t = sign * fixed
    held = ~tune
    said = held & (sign * scores >= t)
    held_precision = correct[said].mean() if said.any() else float("nan")
    recall = (correct & said).sum() / (held & is_copy).sum()
    wrong = int((said & ~correct).sum())
    return f"| {name} | {sign * t:.3g} | {held_precision:.3f} | {recall:.3f} | {wrong} |"
