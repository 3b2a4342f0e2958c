"""Diagnosis accuracy: run selectors over labelled failure states and compare with the privileged labels.

    python -m experiments.diagnose --task=drawer --bank-dir=runs/drawer-.../bank --selector=rules --selector=oracle
    python -m experiments.diagnose --task=drawer --bank-dir=DIR --selector=gemini --num-states=60   # needs GEMINI_API_KEY
    python -m experiments.diagnose --task=drawer --bank-dir=DIR --selector=cached                  # replays, offline

Without --bank-dir a small failure bank is collected with the (cached) BC base policy, which compiles MJX
programs (minutes on CPU). Per selector it reports failure-mode and recovery-stage accuracy with Wilson 95%
CIs, confusion matrices (markdown and PNG), per-mode precision/recall and n, fallbacks and cache hits.
Writes to --out: config.json, diagnosis.json, diagnosis.md, confusion_<selector>.png,
records_<selector>.jsonl (raw VLM text and errors per state; never the API key) and, for image
selectors, frames/<index>_<camera>.png. `--selector=gemini` answers are cached (--cache, default
~/.cache/recovla-jax/vlm_cache.jsonl), so a rerun makes no requests and gives the same answers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import recovla_jax  # noqa: F401  (sets MUJOCO_GL=egl before mujoco loads)


def build_parser() -> argparse.ArgumentParser:
    from recovla_jax.diagnosis.gemini import DEFAULT_MODEL
    from recovla_jax.diagnosis.selectors import FALLBACK_NAMES, SELECTOR_NAMES

    p = argparse.ArgumentParser(prog="python -m experiments.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="drawer")
    p.add_argument("--selector", action="append", choices=SELECTOR_NAMES,
                   help="selector(s) to score; repeat the flag for several (default: auto = gemini with a key, else rules)")
    p.add_argument("--bank-dir", default=None, help="saved failure bank (bank.npz + bank.json); default: collect one")
    p.add_argument("--out", default=None, help="output directory (default runs/diagnose-<task>-<timestamp>)")
    p.add_argument("--num-states", type=int, default=None, help="score a seeded random subset of this many states")
    p.add_argument("--split", choices=["all", "train", "heldout"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fallback", choices=FALLBACK_NAMES, default="rules", help="answers for invalid VLM answers")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Gemini model name")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per Gemini request")
    p.add_argument("--max-attempts", type=int, default=4, help="Gemini requests per state (retries on 429/5xx)")
    p.add_argument("--base-url", default=None, help="Gemini API base URL override (proxy, test server)")
    p.add_argument("--cache", default=None, help="VLM answer cache (JSONL); default ~/.cache/recovla-jax/vlm_cache.jsonl")
    p.add_argument("--no-cache", action="store_true", help="gemini: neither read nor write the answer cache")
    p.add_argument("--state-in-prompt", action="store_true", help="gemini: also give the observation vector as text")
    p.add_argument("--cameras", default="front,wrist", help="comma-separated camera names")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--candidates", type=int, default=256, help="injected candidates per mode when collecting a bank")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from experiments.pipeline import load_bank
    from recovla_jax.diagnosis.bank_diagnosis import diagnose_bank
    from recovla_jax.diagnosis.gemini import VLMConfigurationError
    from recovla_jax.diagnosis.metrics import plot_confusion, report_markdown, score
    from recovla_jax.diagnosis.selectors import make_selector, resolve_auto
    from recovla_jax.failures.bank import BankConfig, collect_failure_bank
    from recovla_jax.sim.native import check_mjx_compatible
    from recovla_jax.tasks import get_task

    console = Console(emoji=False)  # "cached:gemini:" must not become an emoji
    task = get_task(args.task)
    out = Path(args.out or f"runs/diagnose-{task.name}-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)

    if args.bank_dir:
        bank = load_bank(Path(args.bank_dir), task)  # exits clearly on another task's bank
        bank_source = str(args.bank_dir)
    else:
        from recovla_jax.policies.bc import load_or_train_base_policy

        console.print("no --bank-dir: collecting a small failure bank (compiles MJX programs; minutes on CPU)")
        base = load_or_train_base_policy(task, log=console.print)
        bank = collect_failure_bank(task, base, BankConfig(candidates_per_mode=args.candidates, seed=args.seed),
                                    log=console.print)
        bank.save(out / "bank")
        bank_source = str(out / "bank")

    pool = np.arange(len(bank))
    if args.split != "all":
        pool = pool[bank.arrays["split"] == {"train": 0, "heldout": 1}[args.split]]
    if args.num_states is not None and args.num_states < pool.size:
        pool = np.sort(np.random.default_rng(args.seed).choice(pool, size=args.num_states, replace=False))
    if pool.size == 0:
        raise SystemExit("no states to diagnose (empty bank or split)")
    true_modes = [bank.modes[int(bank.arrays["mode"][i])] for i in pool]
    true_stages = [bank.stages[int(bank.arrays["stage"][i])] for i in pool]
    splits = [("train", "heldout")[int(bank.arrays["split"][i])] for i in pool]

    names = args.selector or ["auto"]
    resolved = []
    for name in names:
        if name == "auto":
            picked, why = resolve_auto()
            console.print(f"selector auto -> {picked} ({why})")
            resolved.append(picked)
        else:
            resolved.append(name)
    cameras = [c.strip() for c in args.cameras.split(",") if c.strip()]
    check_mjx_compatible(task.mj_model)
    config = {**vars(args), "selectors_resolved": resolved, "bank": bank_source, "num_scored": int(pool.size),
              "cameras": cameras}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))

    summary: dict = {"task": task.name, "bank": bank_source, "n": int(pool.size), "selectors": {}}
    md = [f"# Diagnosis accuracy: task {task.name}", "",
          f"{pool.size} labelled failure states from `{bank_source}` (split: {args.split}); labels are the "
          "simulator's privileged failure mode and recovery stage. Rates: Wilson 95% CI.", ""]
    for name in resolved:
        selector = make_selector(name, task, fallback=args.fallback, cache_path=Path(args.cache) if args.cache else None,
                                 use_cache=not args.no_cache, model=args.model, timeout_s=args.timeout,
                                 max_attempts=args.max_attempts, base_url=args.base_url,
                                 state_in_prompt=args.state_in_prompt)
        # `gemini` (its cache on) and `cached` both answer as "cached:gemini": each keeps its own outputs
        key = selector.name if selector.name not in summary["selectors"] else f"{selector.name} (--selector={name})"
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")
        records = out / f"records_{label}.jsonl"
        ok = [0]
        t0 = time.time()
        with Progress(TextColumn(f"[bold]{selector.name}[/]"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]:.1f} states/s  mode acc {task.fields[acc]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
            bar = progress.add_task(selector.name, total=int(pool.size), rate=0.0, acc="-")
            with records.open("w") as f:
                def on_result(index: int, result, _f=f) -> None:
                    done = progress.tasks[0].completed + 1
                    ok[0] += result.descriptor.failure_mode == bank.modes[int(bank.arrays["mode"][index])]
                    _f.write(json.dumps({"index": index, **result.model_dump()}) + "\n")
                    progress.update(bar, advance=1, rate=done / max(time.time() - t0, 1e-9),
                                    acc=f"{100 * ok[0] / done:.1f}%")

                try:
                    results = diagnose_bank(task, bank, selector, pool, cameras=cameras, width=args.width,
                                            height=args.height, frames_dir=(out / "frames") if selector.needs_images else None,
                                            on_result=on_result)
                except VLMConfigurationError as err:
                    raise SystemExit(str(err)) from None
        report = score(task, results, true_modes, true_stages, splits)
        report["wall_s"] = time.time() - t0
        summary["selectors"][key] = report
        plot_confusion(report, out / f"confusion_{label}.png", f"{task.name}: {key} (n={report['n']})")
        md.append(report_markdown(key, report))
        md.append(f"![confusion]({f'confusion_{label}.png'})\n")
        own = report["selector_only_mode_accuracy"]
        if report["fallbacks"] and own:
            console.print(f"{key}: its own answers' mode accuracy {100 * own['rate']:.1f}% (n={own['trials']}); "
                          "with the fallback's answers:")
        console.print(f"{key}: mode accuracy {100 * report['mode_accuracy']['rate']:.1f}%, stage accuracy "
                      f"{100 * report['stage_accuracy']['rate']:.1f}% (n={report['n']}, fallbacks {report['fallbacks']}, "
                      f"cache hits {report['cache_hits']})")
    (out / "diagnosis.json").write_text(json.dumps(summary, indent=2))
    (out / "diagnosis.md").write_text("\n".join(md))
    console.print(f"wrote {out / 'diagnosis.md'}")
    return out


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
