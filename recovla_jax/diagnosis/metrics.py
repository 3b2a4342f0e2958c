"""Accuracy of a selector against privileged labels: Wilson CIs, confusion matrices, per-mode precision/recall.

Why separate VLM-only accuracy: a fallback answer is the rules' (or oracle's) answer, not the VLM's;
reporting accuracy over all answers and over answers the VLM itself gave keeps a failing VLM visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from recovla_jax.diagnosis.types import DiagnosisResult
from recovla_jax.evaluation.stats import wilson
from recovla_jax.tasks.base import Task


def _rate(hits: int, n: int) -> dict | None:
    return wilson(hits, n).as_dict() if n > 0 else None


def confusion(true: Sequence[str], pred: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Counts, rows = true label, columns = prediction, in `names` order."""
    m = np.zeros((len(names), len(names)), np.int64)
    for t, p in zip(true, pred):
        m[names.index(t), names.index(p)] += 1
    return m


def per_class(matrix: np.ndarray, names: Sequence[str]) -> dict[str, dict]:
    """n (true count), predicted count, precision and recall of each class (None where undefined)."""
    out = {}
    for i, name in enumerate(names):
        tp, support, predicted = int(matrix[i, i]), int(matrix[i].sum()), int(matrix[:, i].sum())
        out[name] = {"n": support, "predicted": predicted,
                     "precision": tp / predicted if predicted else None, "recall": tp / support if support else None}
    return out


def score(task: Task, results: Sequence[DiagnosisResult], true_modes: Sequence[str], true_stages: Sequence[str],
          splits: Sequence[str] | None = None) -> dict:
    """The machine-readable accuracy report of one selector's results against the labels."""
    pred_modes = [r.descriptor.failure_mode for r in results]
    pred_stages = [r.descriptor.recovery_stage for r in results]
    mode_ok = np.array([p == t for p, t in zip(pred_modes, true_modes)], bool)
    stage_ok = np.array([p == t for p, t in zip(pred_stages, true_stages)], bool)
    own = np.array([not r.record.fallback_used for r in results], bool)
    cm_mode = confusion(true_modes, pred_modes, task.failure_modes)
    cm_stage = confusion(true_stages, pred_stages, task.recovery_stages)
    latency = np.array([r.record.latency_s for r in results]) if results else np.zeros(0)
    report = {
        "n": len(results),
        "mode_accuracy": _rate(int(mode_ok.sum()), len(results)),
        "stage_accuracy": _rate(int(stage_ok.sum()), len(results)),
        "answered_by_selector": int(own.sum()),
        "fallbacks": int((~own).sum()),
        # answers by the oracle fallback are the simulator's labels: scored as the selector's, they are correct by fiat
        "oracle_fallbacks": int(sum(r.record.fallback_used and r.record.fallback == "oracle" for r in results)),
        "selector_only_mode_accuracy": _rate(int((mode_ok & own).sum()), int(own.sum())),
        "selector_only_stage_accuracy": _rate(int((stage_ok & own).sum()), int(own.sum())),
        "cache_hits": int(sum(r.record.cache_hit for r in results)),
        "with_errors": int(sum(bool(r.record.errors) for r in results)),
        "latency_s": ({"mean": float(latency.mean()), "p50": float(np.percentile(latency, 50)),
                       "p95": float(np.percentile(latency, 95))} if latency.size else None),
        "modes": list(task.failure_modes),
        "stages": list(task.recovery_stages),
        "confusion_mode": cm_mode.tolist(),
        "confusion_stage": cm_stage.tolist(),
        "per_mode": per_class(cm_mode, task.failure_modes),
        "per_stage": per_class(cm_stage, task.recovery_stages),
    }
    if splits is not None:
        report["by_split"] = {}
        for split in sorted(set(splits)):
            sel = np.array([s == split for s in splits], bool)
            report["by_split"][split] = {"n": int(sel.sum()),
                                         "mode_accuracy": _rate(int((mode_ok & sel).sum()), int(sel.sum())),
                                         "stage_accuracy": _rate(int((stage_ok & sel).sum()), int(sel.sum()))}
    return report


def _fmt_rate(rate: dict | None) -> str:
    if rate is None:
        return "n/a"
    return f"{100 * rate['rate']:.1f}% [{100 * rate['ci_low']:.1f}, {100 * rate['ci_high']:.1f}] (n={rate['trials']})"


def confusion_markdown(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    """A markdown table, rows = true label, columns = prediction."""
    lines = ["| true \\ predicted | " + " | ".join(names) + " | n |", "|---" * (len(names) + 2) + "|"]
    for name, row in zip(names, matrix):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    return "\n".join(lines)


def report_markdown(selector: str, report: dict) -> str:
    """The per-selector section of diagnosis.md."""
    oracle = report.get("oracle_fallbacks", 0)
    with_fallback = "" if not report["fallbacks"] else (
        f" (with {report['fallbacks']} fallback answers" + (f", {oracle} of them the oracle's privileged labels, "
                                                            "correct by construction" if oracle else "") + ")")
    lines = [f"## {selector}", ""]
    if report["fallbacks"]:  # the selector's own accuracy is the headline; the mixed one follows, labelled
        lines.append(f"- **the selector's own answers**: mode {_fmt_rate(report['selector_only_mode_accuracy'])}, "
                     f"stage {_fmt_rate(report['selector_only_stage_accuracy'])}")
    lines += [f"- failure-mode accuracy{with_fallback}: {_fmt_rate(report['mode_accuracy'])}",
             f"- recovery-stage accuracy{with_fallback}: {_fmt_rate(report['stage_accuracy'])}",
             f"- answered by the selector itself: {report['answered_by_selector']} / {report['n']} "
             f"(fallbacks {report['fallbacks']}, cache hits {report['cache_hits']}, answers with errors "
             f"{report['with_errors']})"]
    if report.get("latency_s"):
        lat = report["latency_s"]
        lines.append(f"- latency per state: mean {lat['mean'] * 1e3:.1f} ms, p95 {lat['p95'] * 1e3:.1f} ms")
    for split, r in report.get("by_split", {}).items():
        lines.append(f"- {split}: mode {_fmt_rate(r['mode_accuracy'])}, stage {_fmt_rate(r['stage_accuracy'])}")
    lines += ["", "Failure mode (rows: label, columns: selector):", "",
              confusion_markdown(report["confusion_mode"], report["modes"]), "",
              "| mode | n | predicted | precision | recall |", "|---|---|---|---|---|"]
    for name, c in report["per_mode"].items():
        p = "n/a" if c["precision"] is None else f"{c['precision']:.3f}"
        r = "n/a" if c["recall"] is None else f"{c['recall']:.3f}"
        lines.append(f"| {name} | {c['n']} | {c['predicted']} | {p} | {r} |")
    lines += ["", "Recovery stage (rows: label, columns: selector):", "",
              confusion_markdown(report["confusion_stage"], report["stages"]), ""]
    return "\n".join(lines)


def plot_confusion(report: dict, path: Path, title: str) -> Path:
    """Both confusion matrices (mode, stage) side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, names, name in ((axes[0], "confusion_mode", report["modes"], "failure mode"),
                                 (axes[1], "confusion_stage", report["stages"], "recovery stage")):
        m = np.asarray(report[key])
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        ax.set_title(name)
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
