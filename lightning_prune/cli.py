"""The ``lightning-prune`` command: LightningCLI with this library's modules and callbacks.

Example:
    ``lightning-prune fit --config configs/quickstart.yaml``
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class PruneCLI(LightningCLI):
    """LightningCLI whose ``model`` and ``data`` are any LightningModule / LightningDataModule (by class_path).

    Example:
        >>> # PruneCLI(args=["fit", "--config", "configs/quickstart.yaml"])
    """


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script."""
    PruneCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
