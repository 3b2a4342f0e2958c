"""Per-state outcomes of an evaluation, and the paired test that compares two methods on the same episodes.

Why: every method of the results table is evaluated on the same held-out states under the same per-state
draws (dynamics, start jitter, noise, latency), so two cells are paired observations. Overlapping Wilson
intervals say little about such pairs; McNemar's exact test on the states only one method recovers does. A
cell records its outcomes as a string of '0'/'1' (one per start, in evaluation order) and a fingerprint of
everything that fixed its episodes except the policy, so the report pairs two cells only when they ran the
same episodes. The exact binomial test comes from scipy.
"""

from __future__ import annotations

import numpy as np

PER_STATE_KEY = "per_state"  # a Wilson cell's field holding {"success": "0110...", "episodes": fingerprint}


def encode_outcomes(ok: np.ndarray) -> str:
    """Success per start as '0'/'1' characters: readable in results.json, 1 byte per episode."""
    return "".join("1" if bool(x) else "0" for x in np.asarray(ok).reshape(-1))


def decode_outcomes(bits: str) -> np.ndarray:
    """The inverse of `encode_outcomes`; refuses anything but '0' and '1'."""
    if set(bits) - {"0", "1"}:
        raise ValueError(f"per-state outcomes must be a string of '0'/'1', got characters {sorted(set(bits) - {'0', '1'})}")
    return np.frombuffer(bits.encode(), np.uint8) == ord("1")


def format_p(p: float) -> str:
    """A p-value as the reports print it: three decimals, "< 0.001" below that."""
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


def episodes_of(cell: dict | None) -> str | None:
    """A cell's episode fingerprint; None when it recorded no per-state outcomes (or an empty fingerprint)."""
    per_state = (cell or {}).get(PER_STATE_KEY) or {}
    return per_state.get("episodes") or None


def paired_outcomes(a: dict | None, b: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The two cells' outcome arrays when both recorded them for the same episodes (same, non-empty fingerprint),
    else None."""
    ea, eb = episodes_of(a), episodes_of(b)
    if ea is None or ea != eb:
        return None
    pa, pb = a[PER_STATE_KEY], b[PER_STATE_KEY]
    oa, ob = decode_outcomes(pa["success"]), decode_outcomes(pb["success"])
    if oa.shape != ob.shape:  # the same fingerprint over a different count cannot happen unless a file was edited
        raise ValueError(f"cells with episode fingerprint {pa.get('episodes')} hold {oa.size} and {ob.size} outcomes")
    return oa, ob


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired comparison of two methods' successes on the same episodes.

    only_a / only_b: episodes one method recovers and the other does not (the discordant pairs, all the test
    reads); difference: a's success rate minus b's; p_value: McNemar's exact two-sided test (binomial, 1/2,
    on the discordant pairs), 1.0 when there are none.
    """
    from scipy.stats import binomtest  # imported when used: the JAX-free sim2sim evaluation imports this module

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired outcomes need two non-empty 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {"n": int(a.size), "only_a": only_a, "only_b": only_b, "difference": (only_a - only_b) / a.size,
            "p_value": p}


def cells_agree(a: dict, b: dict) -> bool:
    """Whether two evaluations of one arm gave the same result: state by state where both recorded per-state
    outcomes (two different fingerprints ran other episodes, so they do not agree even at an equal count), else by
    success count and trials (a cell from before per-state outcomes were kept)."""
    ea, eb = episodes_of(a), episodes_of(b)
    if ea is not None and eb is not None:
        pair = paired_outcomes(a, b)
        return pair is not None and bool(np.array_equal(*pair))
    return (a["successes"], a["trials"]) == (b["successes"], b["trials"])


def disagreement_reason(a: dict, b: dict) -> str:
    """Why two evaluations of one arm that do not agree (`cells_agree` False) differ, as far as their records show."""
    ea, eb = episodes_of(a), episodes_of(b)
    if ea is not None and ea == eb:
        return ("the same episodes (same fingerprint) gave other outcomes: another base policy, code version or "
                "device")
    if ea is not None and eb is not None:
        return "they ran other episodes (another bank, seed, evaluation conditions or horizon)"
    return "the runs do not share failure states or evaluation seed (one predates per-state outcomes)"
