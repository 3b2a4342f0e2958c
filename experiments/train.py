"""Main job: frozen base -> failure bank -> diagnosis -> compiled rewards -> residual PPO -> evaluation.

    python -m experiments.train --task=drawer                # CPU defaults finish in under ~30 min
    python -m experiments.train --task=drawer --policy=conditioned --timesteps=20000000
    python -m experiments.train --task=pick_place            # with the task's best measured settings (see
                                                             # --no-task-recipe); about 85 min on 2 CPU cores

Writes a run directory with the resolved config, metrics (JSONL + TensorBoard), checkpoints, the
failure bank, summary.md, results.json and learning_curves.png. Defaults scale up on GPU/TPU.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from experiments.arg_types import fraction, layer_widths, non_negative_float, positive_int
from experiments.task_recipes import add_recipe_flag, parse_with_recipe

os.environ.setdefault("MUJOCO_GL", "egl")


# PPO's KL target after an expert warm start (pick_place dropped_in_transit, docs/experiments.md "Expert warm start").
WARM_START_DESIRED_KL = 0.01
# Off by default: pick_place's missed_grasp (expert-guided residual 47.1% of train states) reached 34.3% warm-started and
# 0.0% with plain PPO at the same alpha 2 (78.3% at alpha 1). docs/experiments.md "Which policies to warm-start".
WARM_START_MIN_TEACHER = 0.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="drawer", help="task name (see recovla_jax.tasks.task_names())")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/<task>-<timestamp>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", choices=["per-mode", "conditioned"], default="per-mode",
                   help="one residual per failure mode (paper) or one descriptor-conditioned residual for all")
    p.add_argument("--selector", choices=["auto", "gemini", "cached", "rules", "oracle"], default="auto",
                   help="diagnosis backend: auto = gemini when GEMINI_API_KEY/GOOGLE_API_KEY is set, else rules; "
                        "gemini answers are cached (~/.cache/recovla-jax/vlm_cache.jsonl); cached = replay only; "
                        "oracle = privileged simulator labels (upper bound)")
    p.add_argument("--fallback-selector", choices=["rules", "oracle"], default="rules",
                   help="answers a VLM reply that is unparseable, names unknown modes/components, or times out")
    p.add_argument("--diagnose-states", type=int, default=5, help="train states per mode shown to the selector (majority vote)")
    p.add_argument("--mask", choices=["selected", "wrong"], default="selected",
                   help="wrong = ablation: train each mode on another mode's descriptor (what a misdiagnosis costs)")
    p.add_argument("--num-envs", type=int, default=None, help="parallel envs (default 128 on CPU, 4096 on GPU/TPU)")
    p.add_argument("--timesteps", type=int, default=None, help="env steps per policy (default 1M CPU, 20M GPU/TPU)")
    p.add_argument("--unroll-length", type=int, default=20)
    p.add_argument("--episode-length", type=int, default=None,
                   help="control steps per episode (bank test and recovery; base-policy cloning too unless the task "
                        "sets its own demonstration horizon, as stack does); default: the task's own (drawer 100)")
    p.add_argument("--alpha", type=float, default=1.0, help="residual scale: action = clip(base + alpha*tanh(r))")
    p.add_argument("--obs-noise", type=float, default=0.001, help="Gaussian observation noise std in training and evaluation")
    p.add_argument("--latency-prob", type=float, default=0.5,
                   help="share of episodes with one control step of action latency (training and evaluation)")
    p.add_argument("--hand-back", action="store_true",
                   help="the residual acts only while the task's failure label names a failure; elsewhere the base drives "
                        "alone (as the robot runtime hands back), in training and evaluation; success stays the whole task's")
    p.add_argument("--hand-back-delay", type=int, default=0, metavar="STEPS",
                   help="with --hand-back: the residual keeps control this many steps after the failure label clears")
    p.add_argument("--expert-path-starts", type=float, default=0.0, metavar="FRACTION",
                   help="share of training episodes (0 <= FRACTION < 1) that start part-way along the scripted expert's "
                        "recovery from a train failure state instead of at the failure state (a start-state curriculum; "
                        "states only, no expert actions are imitated; evaluation starts from held-out failure states)")
    p.add_argument("--expert-path-stride", type=int, default=10, metavar="STEPS",
                   help="with --expert-path-starts: keep a state every STEPS steps of each expert recovery")
    p.add_argument("--expert-warm-start", type=int, default=0, metavar="ROUNDS",
                   help="before PPO, fit each policy to the scripted expert's corrections on its train failure states in "
                        "ROUNDS DAgger rounds (round 1 executes the expert-guided action, later rounds the fitted policy), "
                        "fit the critic to the fitted policy's returns, then run PPO as usual; the expert reads privileged "
                        "simulator state; its extra rollouts are counted in results.json; evaluation is unchanged (0: off). "
                        f"It switches --desired-kl ({WARM_START_DESIRED_KL}) and --freeze-normalizer on unless given: without "
                        "them PPO undid the fit (pick_place, docs/experiments.md)")
    # -3.0 = WarmStartConfig's default, written out so --help stays free of JAX imports (a test pins the two together)
    p.add_argument("--warm-start-log-std", type=float, default=-3.0,
                   help="with --expert-warm-start: PPO's initial exploration log-std (instead of --init-log-std); wider "
                        "noise erases the fit (pick_place: a fit with 27.5%% own success kept 26.6%% at -3.5, 17.4%% at "
                        "-2.5, 2.1%% at -1.5)")
    # 2000 = WarmStartConfig's default, written out for the same reason (the same test pins it)
    p.add_argument("--warm-start-fit-steps", type=positive_int, default=2000, metavar="STEPS",
                   help="with --expert-warm-start: Adam steps fitting the actor after each DAgger round (batch 1024); "
                        "pick_place missed_grasp on a 4096-candidate bank underfitted at 2000 (actor loss 0.012, the "
                        "fit's own success flat near 15-20%%; 8000: 0.006, docs/experiments.md session 23)")
    p.add_argument("--warm-start-min-teacher", type=fraction, default=WARM_START_MIN_TEACHER, metavar="FRACTION",
                   help="with --expert-warm-start: warm-start a policy only where the expert-guided residual recovers at "
                        "least FRACTION of its train failure states; the others train with plain PPO (no warm start, "
                        "and --desired-kl / --freeze-normalizer as without --expert-warm-start); 0 (default): warm-start "
                        "every policy (pick_place missed_grasp at alpha 2: guide 47%%, warm-started 34.3%%, plain PPO 0.0%%)")
    p.add_argument("--warm-start-fallback", action=argparse.BooleanOptionalAction, default=True,
                   help="with --expert-warm-start: drop a policy's fit and train it with plain PPO from scratch where, "
                        "sampled with PPO's initial noise, the fit succeeds from fewer train failure states than the "
                        "fresh policy does at --init-log-std (peg_insert jammed_halfway: fit 23.4%%, warm-started 48.8%% "
                        "held-out, plain PPO 94.6%%)")
    p.add_argument("--desync-episodes", action="store_true",
                   help="cut each training env's first episode at a random length so envs do not start and end in "
                        "lockstep (each PPO update then mixes every phase of the episode); evaluation is unchanged")
    p.add_argument("--residual-penalty", type=float, default=None, help="override the mask's residual_magnitude weight")
    p.add_argument("--reward-weight", action="append", default=[], type=reward_weight_arg, metavar="COMPONENT=WEIGHT",
                   help="set one reward component's weight in every mode's mask (repeatable; 0 drops it): an ablation "
                        "knob on top of the selector's masks, recorded in config.json")
    # (256, 256) = PPOConfig's default, written out so --help stays free of JAX imports (a test pins the two together)
    p.add_argument("--actor-hidden", type=layer_widths, default=(256, 256), metavar="W1,W2,...",
                   help="hidden-layer widths of the residual actor (the critic keeps 256,256); the residual baselines "
                        "use the run's, the fine-tuned base keeps the base network's. On stack wrong_order 512,512,512 "
                        "kept the DAgger fits from collapsing (best 81.6%% vs 61.7%%) yet ended lower after PPO (50.5%% vs "
                        "60.9%% held-out, one seed; docs/experiments.md, session 36)")
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--desired-kl", type=non_negative_float, default=None, metavar="KL",
                   help="adapt the learning rate each PPO minibatch to keep the KL to the rollout policy near KL "
                        f"(rsl_rl's adaptive schedule; replaces the linear decay; 0: off; default: off, {WARM_START_DESIRED_KL} "
                        "with --expert-warm-start)")
    p.add_argument("--freeze-normalizer", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the observation normaliser PPO starts with instead of updating it every iteration "
                        "(default: on with --expert-warm-start, whose normaliser is fitted on its DAgger data)")
    p.add_argument("--gamma", type=float, default=0.99, help="discount; 0.99 suits 100-step recovery episodes")
    p.add_argument("--shaping-discount", choices=["none", "gamma"], default="none",
                   help="potential reward terms pay Phi(s') - Phi(s) (none: every measured run) or gamma * Phi(s') - "
                        "Phi(s), shaping that leaves the discounted task's optimal policy unchanged (not yet measured; "
                        "docs/experiments.md, session 30)")
    p.add_argument("--entropy-coef", type=float, default=1e-3)
    # -0.5 = PPOConfig's default, written out so --help stays free of JAX imports (a test pins the two together)
    p.add_argument("--init-log-std", type=float, default=-0.5,
                   help="initial log std of the residual's exploration noise (before tanh and alpha)")
    p.add_argument("--candidates", type=int, default=None,
                   help="injected candidates per failure mode (default 1024 CPU, 8192 GPU)")
    p.add_argument("--min-heldout", type=int, default=None,
                   help="inject more candidates of a mode (beyond --candidates) until its held-out split holds this "
                        "many base failures (default 200: the evaluation table asks for n >= 200 per cell; 0: off)")
    p.add_argument("--max-candidates", type=int, default=None,
                   help="cap per mode on injected candidates (default 24576 on CPU, 131072 on GPU/TPU)")
    p.add_argument("--bank-dir", default=None, help="reuse a saved failure bank instead of collecting one")
    p.add_argument("--modes", default=None, type=lambda s: tuple(m.strip() for m in s.split(",") if m.strip()),
                   help="comma-separated failure modes to train and evaluate (default: every mode of the task)")
    p.add_argument("--no-randomization", action="store_true", help="switch domain randomization off (on by default)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoints")
    p.add_argument("--coordinator-address", default=None, help="multi-host: jax.distributed coordinator host:port")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    add_recipe_flag(p)
    return p


def reward_weight_arg(text: str) -> tuple[str, float]:
    """`COMPONENT=WEIGHT` -> (component, weight); the component names are checked against the task later."""
    name, sep, value = text.partition("=")
    try:
        weight = non_negative_float(value)
    except argparse.ArgumentTypeError:
        weight = None
    if not sep or not name.strip() or weight is None:
        raise argparse.ArgumentTypeError(f"expected COMPONENT=WEIGHT with a finite weight >= 0, got {text!r}")
    return name.strip(), weight


def apply_warm_start_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on --expert-warm-start: PPO then runs with the adaptive learning rate and keeps the warm
    start's normaliser, which together keep its narrow-noise fit (docs/experiments.md "Expert warm start"). config.json records
    the values used, so a resume and the run's baselines train the same way."""
    warm = args.expert_warm_start > 0
    # What a policy that `--warm-start-min-teacher` leaves to plain PPO trains with: the values given, else the
    # defaults without the warm start.
    args.ppo_without_warm_start = {"desired_kl": args.desired_kl or None, "freeze_normalizer": bool(args.freeze_normalizer)}
    if args.desired_kl is None and warm:
        args.desired_kl = WARM_START_DESIRED_KL
    if args.desired_kl == 0.0:
        args.desired_kl = None
    if args.freeze_normalizer is None:
        args.freeze_normalizer = warm
    return args


def main(argv: list[str] | None = None) -> Path:
    args = apply_warm_start_defaults(parse_with_recipe(build_parser(), argv))
    import jax

    if args.coordinator_address:
        if jax.devices()[0].platform == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    from recovla_jax.utils.jax_setup import configure_jax, warn_if_hash_seed_random

    configure_jax()
    warn_if_hash_seed_random()
    from experiments.pipeline import run_pipeline

    return run_pipeline(args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
