"""NIRExport: write the folded network as a NIR graph (``.nir``) at fit end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from spikenorm.callbacks.batches import batch_inputs, model_inputs
from spikenorm.callbacks.output_folders import output_folder
from spikenorm.callbacks.task_network import task_network
from spikenorm.export import to_nir, write_nir
from spikenorm.fold import fold_model


class NIRExport(Callback):
    """At fit end, fold ``pl_module.model`` (:func:`spikenorm.fold.fold_model`, which works on a copy in eval
    mode) and write it with :func:`spikenorm.export.write_nir` to ``<dirpath>/<filename>.nir``.
    The export is tried once before the first training step (the fold at setup, the NIR conversion on the
    first batch), so a network NIR cannot express fails then, with the reason, and not after training.

    The LightningModule must be a :class:`~spikenorm.callbacks.task_protocols.NetworkTask` (its network as
    ``model``). ``dirpath`` defaults to the checkpoint folder, else the trainer's ``default_root_dir``. The node
    shapes come from the first training batch, encoded with ``pl_module.encode(x)`` when the module has it (as
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
            self._export(pl_module, None)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._example is None:
            self._example = batch_inputs(batch)[:1].detach().clone()
            self._export(pl_module, None)  # what NIR cannot express fails here, before the first step

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        if self._example is None:
            raise ValueError("NIRExport saw no training batch to take the input shape from")
        self.saved_paths = [self._export(pl_module, output_folder(trainer, self.dirpath) / f"{self.filename}.nir")]
        rank_zero_info(f"NIRExport: {self.summary_line()}")

    def _export(self, pl_module: LightningModule, path: Path | None) -> Path | None:
        """Fold the network and, once an example is kept, convert it to NIR on the example (``[1, ...]``, encoded
        as the task encodes) and write it to ``path`` when given. Raises a ValueError saying why it cannot."""
        network = task_network(pl_module, "NIRExport")
        try:
            folded = fold_model(network).cpu()
            if self._example is None:
                return None
            sample = model_inputs(pl_module, self._example.to(pl_module.device)).detach().cpu()
            if path is None:
                to_nir(folded, sample, self.dt)
                return None
            return write_nir(folded, sample, path, self.dt)
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
        """Restore what a resumed fit wrote before; a file this instance wrote since is kept (Lightning restores
        callbacks from the checkpoint a test loads, e.g. the best one after the fit that wrote the file)."""
        if not self.saved_paths:
            self.saved_paths = [Path(p) for p in state_dict.get("saved_paths", [])]
