"""summary.md and learning-curve plots of a training run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.report import trained_arm_label  # noqa: E402
from experiments.training_progress import success_by_phase  # noqa: E402


def write_learning_curves(curves: dict[str, list[dict]], path: Path, settle_steps: int = 0) -> None:
    """Return and training success per policy against env steps.

    Both are plotted from `settle_steps` on (num_envs * episode_length: every env has finished a full
    episode): before that the only finished episodes are the early ones, i.e. mostly successes, and both
    read high (e.g. 100% success in the first iteration of a policy that then learns from 0%).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        settled = [m for m in curve if m["env_steps"] >= settle_steps]
        steps = [m["env_steps"] for m in settled]
        # Each iteration's means are over the few episodes that ended in it (faint); the line pooled by episode
        # over each twentieth of the run is the one to read.
        step_of = {m["iteration"]: m["env_steps"] for m in settled}
        pooled = [p for p in success_by_phase(settled, 20) if p["episodes"]]
        centres = [0.5 * (step_of[p["iterations"][0]] + step_of[p["iterations"][1]]) for p in pooled]
        for ax, key, pooled_key in ((axes[0], "episode/sum_reward", "mean_return"), (axes[1], "episode/success", "success")):
            line, = ax.plot(steps, [m.get(key, float("nan")) for m in settled], alpha=0.3)
            ax.plot(centres, [p[pooled_key] for p in pooled], color=line.get_color(), marker="o", markersize=3,
                    linewidth=2, label=f"{name} (pooled over each 1/20 of the run)")
    since = f" from {settle_steps:,} steps (every env has finished an episode)" if settle_steps else ""
    axes[0].set(xlabel="env steps", ylabel="mean episode return", title="return" + since)
    axes[1].set(xlabel="env steps", ylabel="success rate of finished episodes", title="training success" + since, ylim=(0, 1))
    for ax in axes:
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] (n={r['trials']})"


def _conditions(c: dict | None) -> str:
    if not c:
        return ""
    from recovla_jax.evaluation.recovery import STATE_KEYS  # lazy: JAX is loaded by then in every caller

    return (f"Each held-out state is started once, {c['episode_length']} control steps, "
            f"{'per-state randomized dynamics' if c['domain_randomization'] else 'nominal dynamics'}, "
            f"observation noise {c['obs_noise']:g}, action latency in {c['latency_prob']:.0%} of episodes, "
            f"gripper jitter {1000 * c['start_jitter_m']:g} mm (seed {c['seed']}"
            f"{', drawn per bank row' if c.get('state_keys') == STATE_KEYS else ', drawn by position in the held-out set'}); "
            "base alone = same episodes with a zero residual.")


def _protocol_lines(results: dict) -> list[str]:
    """Bullets for the training/evaluation options that change what a number means (hand-back, path starts)."""
    lines = []
    c = results.get("eval_conditions") or {}
    if c.get("hand_back"):
        lines.append(f"- hand-back: the residual acts while the failure label names a failure (+{c.get('hand_back_delay', 0)} "
                     "steps); the base drives alone elsewhere, in training and evaluation")
    p = results.get("expert_path_starts")
    if p:
        lines.append(f"- expert-path starts: {p['fraction']:.0%} of training episodes start on one of {p['path_states']} states "
                     f"along the expert's recoveries from train states (every {p['stride']} steps); the training-success "
                     "curve counts those episodes too, the table below only held-out failure states")
    w = results.get("expert_warm_start")
    if w:
        starts = ", ".join(f"{name} {100 * r['start_success']:.1f}%" + (
            f" ({100 * r['start_success_sampled']:.1f}% sampling with PPO's initial exploration noise"
            + (f", log-std {r['start_log_std']:g}" if r.get("start_log_std") is not None else "") + ")"
            if r.get("start_success_sampled") is not None else "")
            for name, r in w["policies"].items() if r.get("start_success") is not None and not r.get("fit_rejected"))
        kept = (f"the fit PPO started from succeeded on its own rollouts from train states in: {starts}"
                + (f"; PPO then adapted its learning rate to a KL target of {w['desired_kl']}"
                   if w.get("desired_kl") is not None else "")
                + ("; the warm start's observation normaliser was kept fixed" if w.get("freeze_normalizer") else "")
                ) if starts else "no policy kept a fit (below)"
        lines.append(f"- expert warm start ({w['rounds']} DAgger rounds on each policy's train states, imitating the scripted "
                     f"expert's corrections; {w['extra_env_steps']:,} env steps outside PPO's budget): {kept}")
        skipped = [f"{name} ({100 * r['teacher_success']:.1f}%)" for name, r in w["policies"].items() if r.get("skipped")]
        if skipped:
            lines.append(f"- trained with plain PPO instead (the expert-guided residual recovered under "
                         f"{100 * w.get('min_teacher', 0.0):.0f}% of their train states, so there was no teacher worth "
                         f"imitating): {', '.join(skipped)}")
        rejected = [f"{name} (fit {100 * (r.get('start_success_sampled') or 0.0):.1f}%, fresh policy "
                    f"{100 * (r.get('fresh_success_sampled') or 0.0):.1f}%)" for name, r in w["policies"].items()
                    if r.get("fit_rejected")]
        if rejected:
            lines.append("- fit dropped, trained with plain PPO from scratch (sampled, the fit succeeded from fewer train "
                         f"states than PPO's fresh policy): {', '.join(rejected)}")
    if results.get("desync_episodes"):
        lines.append("- desynchronized episodes: each training env's first episode was cut at a random length, so PPO "
                     "updates mix every phase of the episode (training only)")
    return lines


def training_success_lines(curves: dict[str, list[dict]], phases: int = 10) -> list[str]:
    """A markdown section: each policy's training success pooled by episodes over `phases` slices of its PPO
    iterations, so that whether PPO raised or lowered a warm-started policy's success reads off one row."""
    rows = {name: success_by_phase(curve, phases) for name, curve in curves.items() if curve}
    if not rows:
        return []
    width = max(len(r) for r in rows.values())
    lines = ["## Training success over the run", "",
             f"Training episodes from the train states, pooled by episode over {width} equal slices of each policy's PPO "
             "iterations (success % and the number of episodes that ended in the slice). The first slice also counts "
             "the episodes that ended before every env had finished one, mostly short successes.", "",
             "| policy | " + " | ".join(f"slice {i + 1}" for i in range(width)) + " |",
             "|---|" + "---|" * width]
    for name, row in rows.items():
        cells = [("-" if p["success"] is None else f"{100 * p['success']:.1f}%") + f" ({p['episodes']})" for p in row]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (width - len(cells))) + " |")
    return lines + [""]


def write_summary(results: dict, config: dict, path: Path) -> None:
    arm = trained_arm_label(results["selector"], results.get("mask"))
    lines = [
        f"# recovla-jax run: task `{results['task']}`",
        "",
        f"- device: {config['device']['platform']} x{config['device']['device_count']}; envs {config['num_envs']}, "
        f"{config['timesteps']:,} env steps per policy; policy layout `{results['policy']}`",
        f"- selector: `{results['selector']}`"
        + (" (privileged labels: an upper bound)" if results["selector"] == "oracle" else "")
        + (" - **ablation `--mask=wrong`: every mode trained on another mode's descriptor**"
           if results.get("mask") == "wrong" else ""),
        f"- base policy `{results['base_policy']['name']}` nominal success: "
        + (_cell(results["base_policy"]["nominal_success"]) if results["base_policy"]["nominal_success"] else "n/a"),
        f"- wall time {results['wall_seconds'] / 60:.1f} min",
        *_protocol_lines(results),
        "",
        "## Recovery success on held-out failure states (Wilson 95% CI)",
        "",
        _conditions(results.get("eval_conditions")),
        "",
        f"| failure mode | train states | base alone | {arm} |",
        "|---|---|---|---|",
    ]
    for m, r in results["modes"].items():
        lines.append(f"| {m} | {r['train_states']} | {_cell(r['base'])} | {_cell(r['recovla'])} |")
    avg = results["average"]
    t = results["target"]
    if t["met"]:
        verdict = "met"
    elif t["average_met"]:
        verdict = ("NOT met as specified: the average reaches 80% but these cells have fewer than "
                   f"{t['min_trials_per_cell']} trials: "
                   + ", ".join(f"{m} (n={n})" for m, n in t["cells_below_min_trials"].items()))
    else:
        verdict = "NOT met"
    lines += [f"| **average over modes** | | {100 * avg['base']:.1f}% | {100 * avg['recovla']:.1f}% |"]
    if "pooled" in results:
        lines.append(f"| **all held-out states pooled** | | {_cell(results['pooled']['base'])} | "
                     f"{_cell(results['pooled']['recovla'])} |")
    lines += ["", f"Target (average over modes >= 80%, every cell n >= {t.get('min_trials_per_cell', 200)}): {verdict}.", "",
              "## Descriptors", ""]
    lines += [f"| true mode | diagnosed as | stage | source | agreement | fallbacks | reward mask | {arm} success |",
              "|---|---|---|---|---|---|---|---|"]
    for m, r in results["modes"].items():
        d = r["descriptor"]
        diag = results.get("diagnosis", {}).get(m, {})
        agree = f"{diag['agreement']:.0%} of {diag['k']}" if diag else "-"
        mask = ", ".join(f"{k} {v:g}" for k, v in d["reward_mask"].items())
        lines.append(f"| {m} | {d['failure_mode']} | {d['recovery_stage']} | `{d['source']}` | {agree} | "
                     f"{diag.get('fallbacks', '-')} | {mask} | {_cell(r['recovla'])} |")
    lines += ["", "## Failure bank", "", "| mode | injected | labelled as mode | base recovers alone | kept |",
              "|---|---|---|---|---|"]
    for m, s in results["bank"]["collection"].items():
        lines.append(f"| {m} | {s['candidates']} | {s['label_matches_injector']} | {s['base_recovers_by_itself']} | "
                     f"{s['kept_base_failures']} |")
    lines += ["", *training_success_lines(results.get("curves") or {}), "![learning curves](learning_curves.png)", ""]
    path.write_text("\n".join(lines))
