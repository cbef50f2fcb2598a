"""Everything this library needs from Lightning beyond its public hooks, in one place.

Each function says in its docstring which Lightning behaviour it relies on;
``tests/test_lightning_seams.py`` pins that behaviour, so a Lightning upgrade that changes it fails
a test instead of silently changing what this library does. By subject:

* :mod:`.strategy`: which strategies pruning works under, the output folder, DDP re-wrap;
* :mod:`.optim`: optimizers rebuilt after surgery or replaced for a phase, optimizer specs;
* :mod:`.loop`: measurements inside ``fit``, the epoch bound, why a fit ended;
* :mod:`.checkpoint`: the checkpoint ``ckpt_path="last"`` means, checks before a resume, structure
  replayed before weights are loaded;
* :mod:`.notices`: Lightning's notices that are not about the run (its tips, its own deprecations).

The CLI imports this package only when a subcommand runs (its ``--help`` does not import Lightning).
"""

from lightning_prune._lightning.checkpoint import (
    check_checkpoint_fits,
    cli_can_merge_checkpoint_hparams,
    earlier_run_checkpoint,
    guard_checkpoint_loading,
    last_checkpoint,
    last_checkpoint_dirs,
    replay_before_weights,
    unguard_checkpoint_loading,
)
from lightning_prune._lightning.loop import (
    MEASUREMENT_LABEL,
    allow_resume_past,
    end_on_should_stop,
    keep_running,
    measurement_label,
    no_training_batches,
    run_validation_as_measurement,
    set_epoch_bound,
    stop_reason,
)
from lightning_prune._lightning.notices import (
    LIGHTNING_OWN_WARNINGS,
    TIP_FILTER,
    TIP_PREFIX,
    quiet_lightning,
)
from lightning_prune._lightning.optim import (
    OPTIMIZERS,
    optimizer_class,
    optimizer_spec,
    rebuild_optimizers,
    replace_optimizers,
)
from lightning_prune._lightning.strategy import (
    check_strategy,
    check_trains,
    output_dir,
    rewrap_and_rebuild,
)

__all__ = [
    "LIGHTNING_OWN_WARNINGS", "MEASUREMENT_LABEL", "OPTIMIZERS", "allow_resume_past",
    "check_checkpoint_fits", "check_strategy", "check_trains", "cli_can_merge_checkpoint_hparams",
    "earlier_run_checkpoint", "end_on_should_stop", "guard_checkpoint_loading",
    "keep_running", "last_checkpoint", "last_checkpoint_dirs", "measurement_label", "no_training_batches",
    "optimizer_class", "optimizer_spec", "output_dir", "rebuild_optimizers", "replace_optimizers",
    "replay_before_weights", "rewrap_and_rebuild", "run_validation_as_measurement", "set_epoch_bound",
    "quiet_lightning", "stop_reason", "TIP_FILTER", "TIP_PREFIX", "unguard_checkpoint_loading",
]
