"""summary.md and learning-curve plots of a training run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_learning_curves(curves: dict[str, list[dict]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        steps = [m["env_steps"] for m in curve]
        axes[0].plot(steps, [m.get("episode/sum_reward", float("nan")) for m in curve], label=name)
        axes[1].plot(steps, [m.get("episode/success", float("nan")) for m in curve], label=name)
    axes[0].set(xlabel="env steps", ylabel="mean episode return", title="return")
    axes[1].set(xlabel="env steps", ylabel="success rate of finished episodes", title="training success", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] (n={r['trials']})"


def write_summary(results: dict, config: dict, path: Path) -> None:
    lines = [
        f"# recovla-jax run: task `{results['task']}`",
        "",
        f"- device: {config['device']['platform']} x{config['device']['device_count']}; envs {config['num_envs']}, "
        f"{config['timesteps']:,} env steps per policy; policy layout `{results['policy']}`",
        f"- selector: `{results['selector']}` (privileged labels; the VLM selectors are not built yet)",
        f"- base policy `{results['base_policy']['name']}` nominal success: "
        + (_cell(results["base_policy"]["nominal_success"]) if results["base_policy"]["nominal_success"] else "n/a"),
        f"- wall time {results['wall_seconds'] / 60:.1f} min",
        "",
        "## Recovery success on held-out failure states (Wilson 95% CI)",
        "",
        "| failure mode | train states | base alone | ReCoVLA residual |",
        "|---|---|---|---|",
    ]
    for m, r in results["modes"].items():
        lines.append(f"| {m} | {r['train_states']} | {_cell(r['base'])} | {_cell(r['recovla'])} |")
    avg = results["average"]
    lines += [f"| **average** | | {100 * avg['base']:.1f}% | {100 * avg['recovla']:.1f}% |", "",
              f"Target: average recovery >= 80%: {'met' if results['target']['met'] else 'NOT met'}.", "",
              "## Descriptors", ""]
    for m, r in results["modes"].items():
        d = r["descriptor"]
        lines.append(f"- `{m}` (source `{d['source']}`, stage `{d['recovery_stage']}`): mask {d['reward_mask']}")
    lines += ["", "## Failure bank", "", "| mode | injected | labelled as mode | base recovers alone | kept |", "|---|---|---|---|---|"]
    for m, s in results["bank"]["collection"].items():
        lines.append(f"| {m} | {s['candidates']} | {s['label_matches_injector']} | {s['base_recovers_by_itself']} | {s['kept_base_failures']} |")
    lines += ["", "![learning curves](learning_curves.png)", ""]
    path.write_text("\n".join(lines))
