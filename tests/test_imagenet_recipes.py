"""Every ImageNet recipe (configs/imagenet/) through ``lightning-prune fit`` as a 2-process CPU DDP job.

The recipes are run as written (bf16 mixed precision, DDP, their callbacks and optimisers) on a tiny
ImageFolder tree of real JPEG files the test writes, with small overrides only: the CPU accelerator,
2 devices, 32-pixel images, 4 images a batch, 3 classes, a weights file of that head and, for the gradual
controller, fewer epochs (``GRADUAL_EPOCHS``). Each run must
finish within its time bound, leave identical weights on both ranks, write one report, and hand back
an artifact that loads into a fresh torchvision network with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_ddp_command

from lightning_prune.artifacts import load_pruned
from lightning_prune.models.torchvision_models import torchvision_model
from lightning_prune.sparse import load_sparse

pytestmark = [pytest.mark.ddp, pytest.mark.e2e, pytest.mark.slow]

TESTS = Path(__file__).parent
ROOT = TESTS.parent
RECIPES = sorted((ROOT / "configs" / "imagenet").glob("*.yaml"))
CLASSES = ("n01440764", "n01443537", "n01484850")  # ImageNet-style class folder names
TIMEOUT = 600  # seconds for one recipe on 2 CPU processes


def _recipe(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/*.JPEG and val/<class>/*.JPEG: 12 and 8 real JPEG files a class, each class its own colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 8)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, size=(40, 48, 3), dtype=np.uint8)
                pixels[..., label] += 150
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", format="JPEG", quality=90)
    return root


#: Epoch overrides of the gradual controller (the structured plans are short already): 3 pruning epochs
#: instead of 15, patience 1 instead of 4, 10 epochs at most instead of 100.
GRADUAL_EPOCHS = {"pruning_epochs": 3, "patience": 1, "finetune_patience": 1, "max_epochs": 10}


def _fewer_epochs(recipe: Path, folder: Path) -> Path:
    """The recipe with only its epoch counts changed (``GRADUAL_EPOCHS``), as a file in ``folder``."""
    config = _recipe(recipe)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith(".GradualMagnitudePruning"):
            assert set(GRADUAL_EPOCHS) <= set(callback["init_args"])
            callback["init_args"].update(GRADUAL_EPOCHS)
    path = folder / recipe.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _stable_init(arch: str) -> torch.nn.Module:
    """Untrained weights that train stably on 4-image batches of 32-pixel images, standing in for pretrained ones.

    A random ResNet-50 whose residual branches all start at full strength blows up within a few steps
    here (its last stage sees 1x1 maps, and BatchNorm statistics of 4 values); each branch's last
    BatchNorm starts at zero instead (torchvision's ``zero_init_residual``), as pretrained networks behave.
    """
    import torchvision

    if arch.startswith("resnet"):
        return getattr(torchvision.models, arch)(num_classes=len(CLASSES), zero_init_residual=True)
    return torchvision_model(arch, num_classes=len(CLASSES))


def test_the_recipes_are_the_ones_the_readme_promises() -> None:
    assert {p.stem for p in RECIPES} == {"baseline_resnet50_imagenet", "ice_resnet50_imagenet",
                                         "aap_resnet50_imagenet", "dg2pf_resnet50_imagenet",
                                         "dg2pf_mobilenet_v2_imagenet"}
    for path in RECIPES:
        trainer = _recipe(path)["trainer"]
        assert (trainer["strategy"], trainer["precision"], trainer["num_nodes"]) == ("ddp", "bf16-mixed", 1)
        assert _recipe(path)["data"]["init_args"]["val_from"] == "test"


def _fit(recipe: Path, image_tree: Path, folder: Path, *extra: str, expect: int = 0) -> str:
    """``lightning-prune fit`` of ``recipe`` (fewer epochs) with the test's overrides, run in ``folder``; its stderr."""
    arch = _recipe(recipe)["model"]["init_args"]["model"]
    torch.manual_seed(0)
    weights = folder / f"{arch}.pth"
    torch.save(_stable_init(arch).state_dict(), weights)
    return run_ddp_command([
        str(Path(sys.executable).with_name("lightning-prune")), "fit", "--config", str(_fewer_epochs(recipe, folder)),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.default_root_dir", str(folder),
        "--trainer.callbacks+=helpers.RankWitness", f"--trainer.callbacks.out={folder}",
        "--model.init_args.num_classes", str(len(CLASSES)), "--model.init_args.weights", str(weights),
        "--data.init_args.data_dir", str(image_tree), "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "8",
        "--data.init_args.num_workers", "0", *extra], folder, TIMEOUT, expect).stderr


@pytest.fixture(scope="module")
def finished(image_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """The folder of ``recipe``'s uninterrupted run (run once per module, on first use)."""
    folders: dict[Path, Path] = {}

    def run(recipe: Path) -> Path:
        if recipe not in folders:
            folder = tmp_path_factory.mktemp(recipe.stem)
            _fit(recipe, image_tree, folder)
            folders[recipe] = folder
        return folders[recipe]

    return run


def _ranks(folder: Path) -> list[dict[str, torch.Tensor]]:
    """Each rank's final weights (``RankWitness``)."""
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        assert value.shape == b[key].shape and torch.equal(value, b[key]), f"{what}: {key}"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_under_ddp_on_cpu(recipe: Path, finished: Callable[[Path], Path]) -> None:
    tmp_path = finished(recipe)
    arch = _recipe(recipe)["model"]["init_args"]["model"]
    ranks = _ranks(tmp_path)
    _same(ranks[0], ranks[1], "the ranks' weights differ")
    reports = list(tmp_path.rglob("report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report.get("totals", report)["completed"] is True
    fresh = torchvision_model(arch, num_classes=len(CLASSES))
    if (reports[0].parent / "pruned_model.pt").is_file():
        pruned = load_pruned(reports[0].parent / "pruned_model.pt", fresh)
        assert sum(p.numel() for p in pruned.parameters()) < sum(
            p.numel() for p in torchvision_model(arch, num_classes=len(CLASSES)).parameters())
    else:
        load_sparse(reports[0].parent / "sparse_model.pt", fresh)
        weights_of = [m.weight for m in fresh.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        zeros = sum(int((w == 0).sum()) for w in weights_of) / sum(w.numel() for w in weights_of)
        assert zeros == pytest.approx(_recipe(recipe)["trainer"]["callbacks"][0]["init_args"]["sparsity"], abs=0.01)
    trained = {k.removeprefix("model."): v for k, v in ranks[0].items() if k.startswith("model.")}
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items() if k in trained)


#: The recipe killed and resumed, and the epoch whose first batch kills it (all ranks at once).
KILLED_RECIPE, KILL_EPOCH = ROOT / "configs" / "imagenet" / "ice_resnet50_imagenet.yaml", 3
FIXED_CROPS = ("--data.init_args.augment", "false")


def test_a_killed_ddp_job_resumes_with_ckpt_path_last_and_ends_as_the_uninterrupted_one(
        image_tree: Path, tmp_path: Path) -> None:
    """The README's resume for a killed multi-process job: the same command plus ``--ckpt_path last``.

    Both runs crop without randomness (``FIXED_CROPS``): the augmentation's random generator is not in a
    checkpoint, so only then is the resumed run bit-identical to the uninterrupted one.
    """
    reference_folder = tmp_path / "uninterrupted"
    reference_folder.mkdir()
    _fit(KILLED_RECIPE, image_tree, reference_folder, *FIXED_CROPS)
    folder = tmp_path / "killed"
    folder.mkdir()
    killed = _fit(KILLED_RECIPE, image_tree, folder, *FIXED_CROPS, "--trainer.callbacks+=helpers.KillJobAt",
                  f"--trainer.callbacks.epoch={KILL_EPOCH}", expect=-9)
    assert not list(folder.rglob("report.json")) and not list(folder.glob("rank*.pt")), killed[-3000:]
    assert [p.parent.parent.name for p in folder.rglob("last.ckpt")] == ["version_0"]
    resumed = _fit(KILLED_RECIPE, image_tree, folder, *FIXED_CROPS, "--ckpt_path", "last")
    # Lightning: "Restoring states from the checkpoint path at .../version_0/checkpoints/last.ckpt"
    assert "Restoring states from the checkpoint path at" in resumed and "version_0/checkpoints/last.ckpt" in resumed
    ranks, reference = _ranks(folder), _ranks(reference_folder)
    _same(ranks[0], ranks[1], "the resumed ranks' weights differ")
    _same(ranks[0], reference[0], "the resumed run ends elsewhere than the uninterrupted one")
    reports = [json.loads(p.read_text()) for p in folder.rglob("report.json")]
    assert len(reports) == 1 and reports[0]["totals"]["completed"] is True
    uninterrupted = json.loads(next(reference_folder.rglob("report.json")).read_text())
    assert [s["params"] for s in reports[0]["steps"]] == [s["params"] for s in uninterrupted["steps"]]
