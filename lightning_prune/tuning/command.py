"""``lightning-prune tune``: its flags, and the call of :func:`lightning_prune.tuning.tune`."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["tune_command"]


def tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-prune tune",
        description="Auto-tune the pipeline's callbacks with Optuna (stage 1, on a data subset), then run the "
                    "full pipeline with the best parameters (stage 2). Settings come from the config's `tune:` "
                    "block; flags given here override it.",
    )
    parser.add_argument("--config", required=True, help="the fit config (same YAML as `lightning-prune fit`)")
    parser.add_argument("--search_space", help="search-space YAML (default: the authors' CIFAR grid)")
    parser.add_argument("--objective", choices=["budget", "ice", "pareto"],
                        help="budget (default): fastest run with drop <= max_drop; ice: the paper's eq. 2; "
                             "pareto: time and drop, Pareto front")
    parser.add_argument("--max_drop", type=float, help="accuracy-drop budget in the metric's units (default 0.01)")
    parser.add_argument("--points_per_unit", type=float,
                        help="ice objective: points per metric unit (default 100: accuracy as a fraction)")
    parser.add_argument("--sampler", choices=["grid", "tpe", "random"], help="default: grid")
    parser.add_argument("--pruner", choices=["none", "median"],
                        help="none (default): every stage-1 trial runs out; median: stop a trial after a pruning step "
                             "where it is behind the completed trials' median at that step")
    parser.add_argument("--n_trials", type=int,
                        help="trials this call runs (grid default: the grid points not yet evaluated; "
                             "0: none, only choose the best so far and run stage 2)")
    parser.add_argument("--subset_fraction", type=float, help="stage-1 data fraction (default 0.02)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output_dir>/study.db)")
    parser.add_argument("--study_name", help="default: <config name>-<objective>")
    parser.add_argument("--output_dir", help="default: <trainer.default_root_dir>/tune")
    parser.add_argument("--no_stage2", dest="stage2", action="store_const", const=False,
                        help="stop after stage 1 (best_params.yaml and best_config.yaml are still written)")
    parser.add_argument("--stage2_subset_fraction", type=float,
                        help="stage-2 data fraction (default: the config's own)")
    parser.add_argument("--seed", type=int, help="seed of the samplers (and of seed_everything if the config has none)")
    parser.add_argument("--verbose", dest="quiet", action="store_const", const=False,
                        help="show Lightning's and the controller's messages during stage-1 trials")
    return parser


def tune_command(args: list[str]) -> Any:
    """``lightning-prune tune``: parse the flags and run :func:`lightning_prune.tuning.tune` (it logs a summary).

    Example:
        >>> # tune_command(["--config", "configs/ice_quickstart.yaml", "--n_trials", "4"])
    """
    options = vars(tune_parser().parse_args(args))
    from lightning_prune.tuning.tuner import tune

    config = options.pop("config")
    return tune(config, **{k: v for k, v in options.items() if v is not None})
