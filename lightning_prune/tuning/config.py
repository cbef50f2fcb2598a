"""The fit config a trial runs: the same YAML ``lightning-prune fit`` takes, edited per trial.

A trial's config is that config with the trial's parameters written into the ``init_args`` of the
matching callbacks (or model / data), ``data.init_args.subset_fraction`` set, ``trainer.default_root_dir``
and the ``StructuredPruning`` controller's ``output_dir`` pointed at the trial's folder, and the progress
bar and model summary off. Only YAML editing lives here; :mod:`.pipeline` runs a config.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lightning_prune.errors import PruningConfigError
from lightning_prune.tuning.space import SearchSpace

#: Top-level key of the study settings inside a fit config (removed before LightningCLI sees it).
TUNE_KEY = "tune"


def load_config(config: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Path | None]:
    """Read a fit config and split off its ``tune:`` block.

    Returns:
        ``(fit_config, tune_block, path)``; ``path`` is ``None`` for a mapping.

    Example:
        >>> fit, block, path = load_config({"model": {"class_path": "m.M"}, "tune": {"n_trials": 3}})
        >>> sorted(fit), block, path
        (['model'], {'n_trials': 3}, None)
    """
    path: Path | None = None
    if isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        path = Path(config)
        if not path.is_file():
            raise PruningConfigError(f"config {str(path)!r} does not exist",
                                     hint="give the YAML you would pass to `lightning-prune fit --config`")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise PruningConfigError(f"config {str(path)!r} is not a YAML mapping", hint="see configs/ice_quickstart.yaml")
    block = data.pop(TUNE_KEY, None) or {}
    if not isinstance(block, Mapping):
        raise PruningConfigError(f"the config's `tune:` block must be a mapping, got {block!r}",
                                 hint="e.g. `tune: {objective: budget, max_drop: 0.01}`")
    return data, dict(block), path


# ---------------------------------------------------------------------------------------------- targets
def _node(value: Any) -> dict[str, Any] | None:
    """A ``{class_path, init_args}`` node (a bare class path string becomes one)."""
    if isinstance(value, str):
        return {"class_path": value}
    if isinstance(value, dict) and isinstance(value.get("class_path"), str):
        return value
    return None


def _callbacks(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The config's ``trainer.callbacks`` as a list of nodes, normalised in place."""
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    callbacks = trainer.get("callbacks") or []
    if not isinstance(callbacks, list):
        callbacks = [callbacks]
    nodes = []
    for value in callbacks:
        node = _node(value)
        if node is not None:
            nodes.append(node)
    trainer["callbacks"] = nodes + [c for c in callbacks if _node(c) is None]
    return nodes


def _sections(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, node)`` for every callback, the model and the data, normalising string nodes in place."""
    found = [(f"trainer.callbacks[{i}]", node) for i, node in enumerate(_callbacks(config))]
    for key in ("model", "data"):
        node = _node(config.get(key))
        if node is not None:
            config[key] = node
            found.append((key, node))
    return found


def import_class(class_path: str) -> type | None:
    """The class ``class_path`` names, or ``None`` if it cannot be imported.

    A bare name (``"StructuredPruning"``) is looked up in ``lightning_prune`` and Lightning's callbacks.

    Example:
        >>> import_class("lightning_prune.StructuredPruning").__name__
        'StructuredPruning'
    """
    candidates = [class_path] if "." in class_path else [f"lightning_prune.{class_path}",
                                                          f"lightning.pytorch.callbacks.{class_path}"]
    for candidate in candidates:
        module_name, _, name = candidate.rpartition(".")
        try:
            value = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError):
            continue
        if isinstance(value, type):
            return value
    return None


def _class_name(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _matches(param_class: str, class_path: str) -> bool:
    return param_class == class_path if "." in param_class else param_class == _class_name(class_path)


def _arguments(cls: type) -> tuple[list[str], bool]:
    """``__init__`` argument names and whether it takes ``**kwargs``."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_KEYWORD for p in parameters)


def controller_node(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``StructuredPruning`` callback node (exactly one must exist).

    Example:
        >>> cfg = {"trainer": {"callbacks": [{"class_path": "lightning_prune.StructuredPruning"}]}}
        >>> controller_node(cfg)["class_path"]
        'lightning_prune.StructuredPruning'
    """
    from lightning_prune.callbacks.structured import StructuredPruning

    nodes = []
    for node in _callbacks(config):
        cls = import_class(node["class_path"])
        if (cls is not None and issubclass(cls, StructuredPruning)) or (
                cls is None and _class_name(node["class_path"]) == "StructuredPruning"):
            nodes.append(node)
    if len(nodes) != 1:
        raise PruningConfigError(f"the config has {len(nodes)} StructuredPruning callbacks in trainer.callbacks; "
                                 "a tuning trial needs exactly one (its report gives the pruning time and drop)",
                                 hint="tune a config that runs with `lightning-prune fit`, e.g. configs/ice_quickstart.yaml")
    return nodes[0]


def validate(space: SearchSpace, config: dict[str, Any]) -> None:
    """Check, before any trial runs, that every key names a class of the config and one of its arguments.

    Also checks that the config has one ``StructuredPruning`` callback and that its ``data`` takes
    ``subset_fraction``.

    Raises:
        PruningConfigError: naming the unknown class or argument, with a HINT listing what exists.

    Example:
        >>> cfg = {"trainer": {"callbacks": [{"class_path": "lightning_prune.StructuredPruning"},
        ...                                  {"class_path": "lightning_prune.LayerFreezer"}]},
        ...        "data": {"class_path": "lightning_prune.DigitsDataModule"}}
        >>> validate(SearchSpace.from_mapping({"LayerFreezer.freeze_fraction": [0.3, 0.9]}), cfg)
    """
    config = copy.deepcopy(config)
    controller_node(config)
    sections = _sections(config)
    available = [f"{_class_name(node['class_path'])} ({label})" for label, node in sections]
    for param in space.params:
        matching = [node for _, node in sections if _matches(param.class_name, node["class_path"])]
        if not matching:
            raise PruningConfigError(f"search space key {param.name!r}: no {param.class_name} in the config's "
                                     "trainer.callbacks, model or data",
                                     hint=f"classes in the config: {', '.join(available) or 'none'}")
        for node in matching:
            cls = import_class(node["class_path"])
            if cls is None:
                raise PruningConfigError(f"search space key {param.name!r}: class {node['class_path']!r} cannot be imported",
                                         hint="check the class_path in the config")
            names, takes_kwargs = _arguments(cls)
            if param.argument not in names and not takes_kwargs:
                raise PruningConfigError(f"search space key {param.name!r}: {cls.__name__} has no argument "
                                         f"{param.argument!r}", hint=f"{cls.__name__} takes: {', '.join(names)}")
    data = _node(config.get("data"))
    data_cls = import_class(data["class_path"]) if data is not None else None
    if data_cls is None or "subset_fraction" not in _arguments(data_cls)[0]:
        raise PruningConfigError(f"the config's data ({data['class_path'] if data else 'missing'}) takes no "
                                 "`subset_fraction`: trials cannot run on a subset",
                                 hint="use a lightning_prune DataModule (DigitsDataModule, CIFAR10DataModule, ...) "
                                      "or add a subset_fraction argument to yours")


# ---------------------------------------------------------------------------------------------- editing
def apply_params(config: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with each ``ClassName.argument`` value written into the matching ``init_args``.

    Every node whose class matches receives the value (a class listed twice is tuned as one).

    Example:
        >>> cfg = {"trainer": {"callbacks": [{"class_path": "lightning_prune.LayerFreezer"}]}}
        >>> apply_params(cfg, {"LayerFreezer.freeze_fraction": 0.9})["trainer"]["callbacks"][0]["init_args"]
        {'freeze_fraction': 0.9}
    """
    config = copy.deepcopy(config)
    sections = _sections(config)
    for name, value in params.items():
        class_part, argument = name.rsplit(".", 1)
        for _, node in sections:
            if _matches(class_part, node["class_path"]):
                node.setdefault("init_args", {})
                if node["init_args"] is None:
                    node["init_args"] = {}
                node["init_args"][argument] = value
    return config


def trial_config(config: dict[str, Any], params: Mapping[str, Any], root_dir: Path,
                 subset_fraction: float | None, seed: int, quiet: bool = True,
                 checkpoints: bool = True) -> dict[str, Any]:
    """The config one run executes: ``params`` applied, data subset, outputs in ``root_dir``.

    ``seed_everything`` is set to ``seed`` unless the config fixes an integer seed itself, so every
    trial starts from the same weights and sees the same data. ``checkpoints=False`` (stage-1 trials:
    an interrupted trial is rerun, not resumed) drops ``ModelCheckpoint`` callbacks and checkpointing.

    Example:
        >>> cfg = {"trainer": {"callbacks": [{"class_path": "lightning_prune.StructuredPruning"}]},
        ...        "data": {"class_path": "lightning_prune.DigitsDataModule"}}
        >>> out = trial_config(cfg, {}, Path("out/trial_0"), subset_fraction=0.02, seed=0)
        >>> out["data"]["init_args"]["subset_fraction"], out["trainer"]["default_root_dir"]
        (0.02, 'out/trial_0')
    """
    config = apply_params(config, params)
    seed_value = config.get("seed_everything")
    if not isinstance(seed_value, int) or isinstance(seed_value, bool):
        config["seed_everything"] = seed
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(root_dir)
    if not checkpoints:
        trainer["callbacks"] = [c for c in _callbacks(config) if _class_name(c["class_path"]) != "ModelCheckpoint"]
        trainer["enable_checkpointing"] = False
    if quiet:  # unless the config lists such a callback itself (Lightning refuses the combination)
        names = [_class_name(node["class_path"]) for node in _callbacks(config)]
        if not any("ProgressBar" in name for name in names):
            trainer["enable_progress_bar"] = False
        if not any("ModelSummary" in name for name in names):
            trainer["enable_model_summary"] = False
    controller = controller_node(config)
    controller.setdefault("init_args", {})
    controller["init_args"] = dict(controller["init_args"] or {}, output_dir=str(root_dir))
    if subset_fraction is not None:
        data = _node(config.get("data"))
        if data is not None:
            data["init_args"] = dict(data.get("init_args") or {}, subset_fraction=subset_fraction)
    return config


def check_combination(config: dict[str, Any], params: Mapping[str, Any]) -> None:
    """Build each tuned callback with the trial's arguments: an invalid combination raises here.

    Raises:
        PruningConfigError: from the callback's own argument checks (e.g. ``delta >= lr_base``).

    Example:
        >>> cfg = {"trainer": {"callbacks": [{"class_path": "lightning_prune.PruningAwareLR"}]}}
        >>> check_combination(cfg, {"PruningAwareLR.lr_base": 1e-3, "PruningAwareLR.delta": 5e-3})
        Traceback (most recent call last):
        ...
        lightning_prune.errors.PruningConfigError: delta=0.005 must be in (0, lr_base=0.001). HINT: use e.g. delta=0.75 * lr_base
    """
    config = apply_params(config, params)
    classes = {name.rsplit(".", 1)[0] for name in params}
    for node in _callbacks(config):
        if not any(_matches(c, node["class_path"]) for c in classes):
            continue
        cls = import_class(node["class_path"])
        init_args = node.get("init_args") or {}
        if cls is None or any(isinstance(v, dict) and "class_path" in v for v in init_args.values()):
            continue  # nested objects: left to the run itself
        try:
            cls(**init_args)
        except PruningConfigError:
            raise
        except Exception:  # noqa: BLE001 - anything else is for the real run to report
            continue


def write_config(config: Mapping[str, Any], path: Path, header: str | None = None) -> Path:
    """Write ``config`` as YAML (keys in their order), with an optional ``#`` comment header.

    Example:
        >>> # write_config({"seed_everything": 0}, Path("out/config.yaml"), header="made by tune")
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    path.write_text(text)
    return path
