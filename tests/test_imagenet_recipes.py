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


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_under_ddp_on_cpu(recipe: Path, image_tree: Path, tmp_path: Path) -> None:
    arch = _recipe(recipe)["model"]["init_args"]["model"]
    torch.manual_seed(0)
    weights = tmp_path / f"{arch}.pth"
    torch.save(_stable_init(arch).state_dict(), weights)
    run_ddp_command([str(Path(sys.executable).with_name("lightning-prune")), "fit", "--config", str(_fewer_epochs(recipe, tmp_path)),
          "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.callbacks+=helpers.RankWitness", f"--trainer.callbacks.out={tmp_path}",
          "--model.init_args.num_classes", str(len(CLASSES)), "--model.init_args.weights", str(weights),
          "--data.init_args.data_dir", str(image_tree), "--data.init_args.image_size", "32",
          "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "8",
          "--data.init_args.num_workers", "0"], tmp_path, TIMEOUT)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "the ranks' weights differ"
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
