"""The report's paired comparisons: ReCoVLA against every other column, state by state, on the same episodes.

Every method of a task is evaluated from the same held-out states under the same per-state draws, so where two
cells recorded their per-state outcomes with the same episode fingerprint (`recovla_jax.evaluation.paired`), the
question "does ReCoVLA recover more than X?" has a paired answer: the states only one of them recovers, and
McNemar's exact test on those. Each task also gets a pooled line over its paired modes (every state once).
Cells evaluated before per-state outcomes were recorded (session 32) cannot be paired; the section says how many.

Where ReCoVLA and a column were both run with several seeds (each seed its own training run and its own evaluation
draws), a second section pairs them seed by seed and puts the seeds' differences side by side. A state-paired p-value
compares two trained policies; it does not see how far retraining moves a policy (session 34: one PPO run per arm
could not separate a mask's effect from run-to-run spread). The seeds' differences do: their mean gets a t interval
over seeds (each seed one observation), which stays wide until several seeds agree.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recovla_jax.evaluation.paired import format_p, mcnemar_exact, paired_outcomes

PAIRED_FIELDS = ("task", "row", "kind", "method", "label", "reference", "n", "reference_successes", "method_successes",
                 "only_reference", "only_method", "difference", "p_value", "seed")
# sim2sim runs other episodes (native dynamics). The base column is paired too (ReCoVLA's own zero-residual arm on the
# same episodes): its "only other" count is the states the base recovers and the residual loses.
NOT_COMPARED = ("sim2sim",)


def paired_rows(mode_rows: list[dict], methods: list[str], reference_of: dict[str, str]) -> tuple[list[dict], int]:
    """(one row per task x mode x method paired with the task's ReCoVLA column, then one pooled row per task x
    method, kind "pooled"; the number of cell pairs that could not be paired)."""
    rows: list[dict] = []
    unpaired = 0
    pooled: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for r in mode_rows:
        ref = reference_of.get(r["task"])
        if ref is None or not r["cells"].get(ref):
            continue
        for m in methods:
            if m == ref or m in NOT_COMPARED or not r["cells"].get(m):
                continue
            pair = paired_outcomes(r["cells"][ref], r["cells"][m])
            if pair is None:
                unpaired += 1
                continue
            rows.append(_row(r["task"], r["row"], "mode", ref, m, *pair))
            pooled.setdefault((r["task"], m), []).append(pair)
    for (task, m), pairs in pooled.items():
        if len(pairs) > 1:
            rows.append(_row(task, f"all {len(pairs)} paired modes, pooled", "pooled", reference_of[task], m, *_pool(pairs)))
    rows.sort(key=lambda x: (x["task"], x["method"], x["kind"] == "pooled"))
    return rows, unpaired


def _pool(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several modes' paired outcome arrays as one pair (every state once), for a pooled McNemar test."""
    return np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])


def _row(task: str, row: str, kind: str, ref: str, method: str, a: np.ndarray, b: np.ndarray) -> dict:
    return {"task": task, "row": row, "kind": kind, "reference": ref, "method": method,
            "reference_successes": int(a.sum()), "method_successes": int(b.sum()), **mcnemar_exact(a, b)}


def paired_markdown(rows: list[dict], unpaired: int, labels: dict[str, str]) -> list[str]:
    """The report's "Paired comparisons" section (nothing when no pair exists and none was missed)."""
    if not rows and not unpaired:
        return []
    lines = ["", "## Paired comparisons (same episodes)", "",
             "ReCoVLA against each other column where both cells recorded per-state outcomes for the same episodes "
             "(same states, per-state dynamics, noise, latency and jitter): the states only one of them recovers, the "
             "difference in success rate (ReCoVLA minus the other) and McNemar's exact two-sided p on those states. "
             "Pooled lines take every paired state of the task once."]
    refs = sorted({(r["task"], r["reference"]) for r in rows})
    if refs:
        lines[-1] += " ReCoVLA here is " + "; ".join(f"{t}: {labels.get(ref, ref)}" for t, ref in refs) + "."
    lines.append("")
    if rows:
        lines += ["| task | failure mode | compared with | n | ReCoVLA | other | only ReCoVLA | only other | difference | "
                  "McNemar p |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            name = f"**{r['row']}**" if r["kind"] == "pooled" else r["row"]
            lines.append(f"| {r['task']} | {name} | {labels.get(r['method'], r['method'])} | {r['n']} | "
                         f"{r['reference_successes']} | {r['method_successes']} | {r['only_a']} | {r['only_b']} | "
                         f"{100 * r['difference']:+.1f} pp | {format_p(r['p_value'])} |")
    if unpaired:
        lines += ["", f"{unpaired} cell pair(s) could not be paired: one side has no per-state outcomes (evaluated before "
                      "session 32) or ran other episodes (another bank, seed or evaluation conditions)."]
    return lines


def write_paired_csv(rows: list[dict], labels: dict[str, str], path: Path) -> None:
    """paired.csv: one line per paired comparison, numeric (`only_reference` / `only_method`: discordant states;
    `kind` "mode" for one failure mode, "pooled" for a task's pooled line, which repeats those modes' states, "seed"
    for one seed's runs pooled over their paired modes, with `seed` set)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PAIRED_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({"task": r["task"], "row": r["row"], "kind": r["kind"], "method": r["method"],
                        "label": labels.get(r["method"], r["method"]),
                        "reference": r["reference"], "n": r["n"], "reference_successes": r["reference_successes"],
                        "method_successes": r["method_successes"], "only_reference": r["only_a"],
                        "only_method": r["only_b"], "difference": r["difference"], "p_value": r["p_value"],
                        "seed": r.get("seed", "")})


def seed_paired_rows(tasks: dict[str, dict], reference_of: dict[str, str]) -> list[dict]:
    """Per task x column x seed where ReCoVLA and the column both ran that seed: one row (kind "seed") pooling the
    modes whose two cells ran the same episodes; then, for a column paired on two or more seeds, one row (kind
    "across-seeds") with each seed's difference, their mean, range and a t interval over seeds. `tasks` is the report
    table's per-task dict, whose "seeds" maps method -> seed -> (cells per mode, source)."""
    rows: list[dict] = []
    for task in sorted(tasks):
        ref = reference_of.get(task)
        by_method = tasks[task].get("seeds", {})
        if ref not in by_method:
            continue
        for method in sorted(by_method):
            if method == ref or method in NOT_COMPARED:
                continue
            per_seed = []
            for seed in sorted(set(by_method[ref]) & set(by_method[method])):
                ref_cells, method_cells = by_method[ref][seed][0], by_method[method][seed][0]
                pairs = [p for m in ref_cells if (p := paired_outcomes(ref_cells[m], method_cells.get(m))) is not None]
                if not pairs:
                    continue
                per_seed.append({**_row(task, f"seed {seed}, {len(pairs)} paired mode(s) pooled", "seed", ref, method,
                                        *_pool(pairs)), "seed": seed, "modes": len(pairs)})
            if len(per_seed) >= 2:
                rows += per_seed + [_across_seeds(task, ref, method, per_seed)]
    return rows


def _across_seeds(task: str, ref: str, method: str, per_seed: list[dict]) -> dict:
    """The seeds' differences (ReCoVLA minus the column) as one observation each: mean, range, the seeds each way and
    a two-sided 95% t interval of the mean (k - 1 degrees of freedom), the spread a single seed's p-value leaves out."""
    from scipy.stats import t as student_t  # imported when used, like mcnemar_exact's binomtest

    d = np.array([r["difference"] for r in per_seed])
    k = d.size
    half = float(student_t.ppf(0.975, k - 1) * d.std(ddof=1) / np.sqrt(k))
    mean = float(d.mean())
    return {"task": task, "row": f"across {k} seeds", "kind": "across-seeds", "reference": ref, "method": method,
            "seeds": [r["seed"] for r in per_seed], "differences": [float(x) for x in d], "mean_difference": mean,
            "range": float(d.max() - d.min()), "ci_low": mean - half, "ci_high": mean + half,
            "reference_ahead": int(np.sum(d > 0)), "method_ahead": int(np.sum(d < 0))}


def seed_paired_markdown(rows: list[dict], labels: dict[str, str]) -> list[str]:
    """The report's "Paired comparisons per seed" section (nothing unless some column pairs on two or more seeds)."""
    if not rows:
        return []
    lines = ["", "## Paired comparisons per seed", "",
             "ReCoVLA against each column run with the same seeds: per seed, the two runs' states pooled over the modes "
             "that ran the same episodes, with McNemar's exact p; then the seeds' differences (ReCoVLA minus the other) "
             "taken as one observation each, with a 95% t interval of their mean. A seed's p-value compares two trained "
             "policies and does not see how far retraining moves them; the interval over seeds does, and it stays wide "
             "until several seeds agree.", "",
             "| task | compared with | seeds | n | ReCoVLA | other | only ReCoVLA | only other | difference | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = labels.get(r["method"], r["method"])
        if r["kind"] == "seed":
            lines.append(f"| {r['task']} | {label} | {r['row']} | {r['n']} | {r['reference_successes']} | "
                         f"{r['method_successes']} | {r['only_a']} | {r['only_b']} | {100 * r['difference']:+.1f} pp | "
                         f"{format_p(r['p_value'])} |")
        else:
            each = ", ".join(f"{100 * x:+.1f}" for x in r["differences"])
            lines.append(f"| {r['task']} | {label} | **{r['row']}** | | | | | | **{100 * r['mean_difference']:+.1f} pp** "
                         f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] (seeds {each} pp; ReCoVLA ahead in "
                         f"{r['reference_ahead']} of {len(r['differences'])}) | |")
    return lines
