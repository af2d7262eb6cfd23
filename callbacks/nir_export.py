"""NIRExport: write the folded network as a NIR graph (``.nir``) at fit end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nir
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from spikenorm.export import to_nir
from spikenorm.fold import fold_model


class NIRExport(Callback):
    """At fit end, fold ``pl_module.model`` (:func:`spikenorm.fold.fold_model`, which works on a copy in eval
    mode) and write it with :func:`spikenorm.export.to_nir` and ``nir.write`` to ``<dirpath>/<filename>.nir``.
    The export is tried once before the first training step (the fold at setup, the NIR conversion on the
    first batch), so a network NIR cannot express fails then, with the reason, and not after training.

    ``dirpath`` defaults to the checkpoint folder, else the trainer's ``default_root_dir``. The node shapes come
    from the first training batch, encoded with ``pl_module.encode(x)`` when the module has it (as
    :class:`~spikenorm.tasks.SpikingClassifier` does); batches are ``(x, y)`` or ``x``. Only rank zero writes,
    and nothing is written under ``fast_dev_run``. Read the file back with ``nir.read`` and run it with
    :func:`spikenorm.export.from_nir` (or another NIR tool; see :mod:`spikenorm.export` for what they support).

    Args:
        filename: file name without the ``.nir`` suffix.
        dirpath: output folder (created if missing).
        dt: the duration of one time step in the graph's time unit (``1e-4`` for snnTorch's NIR import).
    """

    def __init__(self, filename: str = "model", dirpath: str | None = None, dt: float = 1.0) -> None:
        super().__init__()
        if not filename:
            raise ValueError("filename must be a non-empty string")
        self.filename = filename
        self.dirpath = dirpath
        self.dt = dt
        self.saved_paths: list[Path] = []
        self._example: Tensor | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # a network that cannot be folded fails here, before any step
            self._convert(pl_module, None)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._example is None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._example = x[:1].detach().clone()
            self._convert(pl_module, self._example)  # what NIR cannot express fails here, before the first step

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        if self._example is None:
            raise ValueError("NIRExport saw no training batch to take the input shape from")
        graph = self._convert(pl_module, self._example)
        checkpoint_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
        directory = Path(self.dirpath or checkpoint_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.filename}.nir"
        nir.write(path, graph)
        self.saved_paths = [path]
        rank_zero_info(f"NIRExport: {self.summary_line()}")

    def _convert(self, pl_module: LightningModule, example: Tensor | None) -> nir.NIRGraph | None:
        """The NIR graph of the folded network on ``example`` (``[1, ...]``, encoded with ``pl_module.encode``
        when it has one); with no example only the fold is checked. Raises a ValueError saying why not."""
        network = getattr(pl_module, "model", None)
        if not isinstance(network, nn.Module):
            raise ValueError(f"NIRExport needs the LightningModule to hold its network as `model`; "
                             f"{type(pl_module).__name__} has none")
        try:
            folded = fold_model(network).cpu()
            if example is None:
                return None
            encode = getattr(pl_module, "encode", None)
            sample = encode(example.to(pl_module.device)) if callable(encode) else example
            return to_nir(folded, sample.detach().cpu(), self.dt)
        except (TypeError, ValueError) as err:
            raise ValueError(f"NIRExport could not export {type(network).__name__} to NIR: {err}") from err

    def summary_line(self) -> str | None:
        """One line for the CLI's end-of-fit summary (None before the export ran)."""
        return f"{'NIR graph':<14} {self.saved_paths[0]}" if self.saved_paths else None

    @property
    def state_key(self) -> str:
        """Unique per output file, so several exports (e.g. one with ``dt=1e-4`` for snnTorch) can coexist."""
        return self._generate_state_key(filename=self.filename, dirpath=self.dirpath)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_paths": [str(p) for p in self.saved_paths]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_paths = [Path(p) for p in state_dict.get("saved_paths", [])]
