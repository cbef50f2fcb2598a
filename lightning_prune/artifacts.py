"""The pruned-model artifact, loading a pruned model into a fresh instance, and the summary table."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.state import PruningReport
from lightning_prune.structural import graph as structure

FORMAT = "lightning_prune.pruned_model/1"


def save_pruned(
    path: str | Path,
    model: nn.Module,
    history: Sequence[Sequence[tuple[str, Sequence[int]]]],
    example_input: torch.Tensor | None,
) -> Path:
    """Write the structural history, the weights and the tracing input (all ``weights_only``-safe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "history": [[[name, [int(i) for i in idxs]] for name, idxs in step] for step in history],
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "example_input": None if example_input is None else example_input.detach().cpu(),
        },
        path,
    )
    return path


def needs_replay(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` holds shapes that differ from ``model``'s (a pruned checkpoint)."""
    current = model.state_dict()
    return any(k in current and tuple(current[k].shape) != tuple(v.shape) for k, v in state_dict.items())


def _read(path: str | Path) -> tuple[list[list[tuple[str, list[int]]]], dict[str, torch.Tensor], torch.Tensor | None]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise PruningConfigError(f"no file at {path!s}", hint="pass the pruned_model.pt or .ckpt path") from err
    except Exception as err:
        raise PruningConfigError(f"{path!s} could not be loaded with weights_only=True: {err}",
                                 hint="pass a Lightning checkpoint or the pruned_model.pt written by StructuredPruning") from err
    if data.get("format") == FORMAT:
        state = data
        weights = data["state_dict"]
    elif "callbacks" in data and "state_dict" in data:
        states = [s for k, s in data["callbacks"].items() if k.startswith("StructuredPruning") and "history" in s]
        if len(states) != 1:
            raise PruningConfigError(f"{path!s} holds {len(states)} StructuredPruning states",
                                     hint="pass a checkpoint written by a fit with one StructuredPruning callback")
        state, weights = states[0], data["state_dict"]
    else:
        raise PruningConfigError(f"{path!s} is neither a Lightning checkpoint nor a pruned-model artifact",
                                 hint="pass the pruned_model.pt or .ckpt written by a pruning run")
    history = [[(str(name), [int(i) for i in idxs]) for name, idxs in step] for step in state["history"]]
    return history, weights, state.get("example_input")


def _prefix_for(model: nn.Module, names: Sequence[str]) -> str:
    """The prefix to strip from recorded names so that they exist in ``model`` ('' or e.g. 'model.')."""
    modules = {n for n, _ in model.named_modules()}
    if all(n in modules for n in names):
        return ""
    for name in names:
        parts = name.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut]) + "."
            if all(n.startswith(prefix) and n[len(prefix):] in modules for n in names):
                return prefix
    raise PruningConfigError(
        f"the recorded layers (e.g. {names[0]!r}) are not in the given {type(model).__name__}",
        hint="pass a fresh instance of the same architecture that was pruned (or the LightningModule around it)",
    )


def load_pruned(path: str | Path, model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """Load a pruned model into ``model``, a fresh, unpruned instance of the same architecture.

    The recorded structure is replayed on ``model`` (channel by channel, as it was pruned), then the
    weights are loaded. ``model`` may be the LightningModule that was trained or the bare network
    inside it (names are matched by stripping a common prefix such as ``model.``).

    Args:
        path: A Lightning checkpoint of a pruning run, or the ``pruned_model.pt`` it wrote.
        model: A fresh, unpruned instance (``nn.Module`` or ``LightningModule``).
        example_input: An input for tracing if the file holds none.

    Returns:
        ``model`` itself, pruned and with the saved weights.

    Example:
        >>> # net = load_pruned("lightning_logs/version_0/pruned_model.pt", cifar_resnet(20))
    """
    history, weights, example = _read(path)
    example = example if example_input is None else example_input
    names = [name for step in history for name, _ in step]
    if names:
        if example is None:
            raise PruningConfigError(f"{path!s} holds no example input to trace the model with",
                                     hint="pass `example_input=` (one input batch)")
        prefix = _prefix_for(model, names)
        history = [[(name[len(prefix):], idxs) for name, idxs in step] for step in history]
        structure.replay(model, example, history)
    else:
        prefix = _prefix_for(model, [k.rpartition(".")[0] for k in weights if "." in k][:1]) if weights else ""
    own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    model.load_state_dict(own, strict=True)
    return model


def summary_table(report: PruningReport, monitor: str) -> str:
    """The end-of-fit summary as plain text (rendered with rich)."""
    table = Table(title="lightning_prune summary")
    for column in ("step", "components", "params", "MACs", f"{monitor} pruned", f"{monitor} tuned", "fine-tuned", "seconds"):
        table.add_column(column, justify="left" if column == "components" else "right")

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    for s in report.steps:
        comps = ", ".join(s.components)
        table.add_row(str(s.step), comps if len(comps) < 40 else comps[:37] + "...", f"{s.params:,}", f"{s.macs:,}",
                      fmt(s.metric_after_prune), fmt(s.metric_after_finetune), "yes" if s.finetuned else "skipped",
                      f"{s.seconds_prune + s.seconds_eval + s.seconds_finetune:.1f}")
    totals = report.totals()
    keep_p = totals["params_after"] / max(1, totals["params_before"])
    keep_m = totals["macs_after"] / max(1, totals["macs_before"])
    caption = (f"params {totals['params_before']:,} -> {totals['params_after']:,} ({100 * (1 - keep_p):.1f}% removed); "
               f"MACs {totals['macs_before']:,} -> {totals['macs_after']:,} ({100 * (1 - keep_m):.1f}% removed); "
               f"{monitor} {fmt(totals['metric_before'])} -> {fmt(totals['metric_after'])}; "
               f"{totals['steps_finetuned']} steps fine-tuned, {totals['steps_skipped']} skipped; "
               f"{totals['seconds_total']:.1f} s")
    table.caption = caption
    buffer = io.StringIO()
    Console(file=buffer, width=140, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()
