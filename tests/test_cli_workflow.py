"""The researcher's workflow through the ``spikenorm`` CLI, each command in a subprocess as a user runs it.

One short quickstart fit (module fixture) is the run the other tests work with: its W&B config and
``hparams.yaml`` (complete, flat run configuration), its checkpoint (rebuilds the network with no config,
honours an evaluation ``T``, refuses another network), ``predict`` (writes its predictions) and the files it
must not touch. The crash test SIGKILLs a fit mid-epoch and resumes it with ``--ckpt_path last``.
"""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import spikenorm_cli
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from spikenorm.datamodules import DigitsDataModule
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.run_status import read_run_status
from spikenorm.tasks import SpikingClassifier
from spikenorm.wandb_runs import read_offline_run

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
USER_CONFIG = "# the user's own config.yaml: comments and all\nmine: true\n"
SHORT = {
    "max_epochs": 1,
    "limit_train_batches": 12,
    "limit_val_batches": 2,
    "limit_test_batches": 2,
    "enable_progress_bar": False,
    "log_every_n_steps": 2,
}


def _recipe(folder: Path, every_n_train_steps: int = 0, **trainer: object) -> Path:
    """quickstart.yaml with shorter trainer settings and the LastCheckpoint step interval, written to folder."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"].update(trainer)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("LastCheckpoint"):
            callback["init_args"]["every_n_train_steps"] = every_n_train_steps
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _spikenorm(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return spikenorm_cli(folder, *args, check=check, PYTHONHASHSEED="0")


def _from_checkpoint(run: dict, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``spikenorm <command> --ckpt_path <the run's last.ckpt>`` with no logger and ``args``, in the run's folder."""
    return _spikenorm(
        run["folder"], command, "--ckpt_path", str(run["ckpt"]), "--trainer.logger=false", *args, check=check
    )


def _printed_metric(output: str, key: str) -> float:
    match = re.search(rf"{re.escape(key)}[\s│|]+([0-9.eE+-]+)", output)  # plain or rich results table
    assert match, output[-3000:]
    return float(match.group(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short quickstart fit through the CLI, in a folder that also holds the user's own config.yaml."""
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "config.yaml").write_text(USER_CONFIG)
    done = _spikenorm(folder, "fit", "--config", str(_recipe(folder, **SHORT)))
    version = folder / "logs" / "quickstart" / "version_0"
    return {
        "folder": folder,
        "stdout": done.stdout,
        "version": version,
        "ckpt": version / "checkpoints" / "last.ckpt",
        "wandb": next((folder / "logs" / "wandb").glob("offline-run-*")),
    }


def _expected_run_config(flat: dict) -> None:
    assert flat["task.class_path"] == "spikenorm.tasks.classification.SpikingClassifier"
    assert flat["task.time_steps"] == 4 and flat["task.loss"] == "ce" and flat["task.check_finite"] is True
    assert flat["model.class_path"] == "spikenorm.models.vgg.SpikingVGG"
    assert (flat["model.layers.norm"], flat["model.layers.neuron"], flat["model.layers.surrogate"]) == (
        "tdbn",
        "lif",
        "sigmoid",
    )
    assert flat["model.layers.surrogate_kwargs.alpha"] == 4.0 and flat["model.cfg"] == "small"
    assert flat["optimizer.class_path"] == "torch.optim.adam.Adam" and flat["optimizer.lr"] == 0.005
    assert flat["optimizer.betas"] == [0.9, 0.999]  # the class's defaults are filled in
    assert flat["lr_scheduler.class_path"].endswith("CosineAnnealingLR") and flat["lr_scheduler.T_max"] == 20
    assert flat["data.class_path"].endswith("DigitsDataModule") and flat["data.batch_size"] == 64
    assert flat["trainer.max_epochs"] == 1 and flat["trainer.devices"] == 1
    assert flat["trainer.accumulate_grad_batches"] == 1 and flat["trainer.strategy"] == "SingleDeviceStrategy"
    assert "trainer.precision" in flat and flat["seed"] == 0
    assert flat["versions.torch"] == torch.__version__ and flat["versions.lightning"] and flat["versions.spikenorm"]


def test_wandb_config_and_hparams_hold_the_complete_flat_run_config(run):
    """Row 1: norm, neuron, surrogate, architecture, optimizer, lr, seed, max_epochs, versions: filterable keys."""
    config = read_offline_run(run["wandb"])["config"]
    _expected_run_config(config)
    hparams = yaml.safe_load((run["version"] / "hparams.yaml").read_text())
    _expected_run_config(hparams)


def test_python_built_task_logs_the_same_keys(run, tmp_path):
    """Row 1: a SpikingClassifier built from objects logs the same flat keys as the CLI run."""
    import functools

    model = SpikingVGG("small", in_channels=1, num_classes=10, layers=LayerSpec(surrogate_kwargs={"alpha": 4.0}))
    task = SpikingClassifier(
        model,
        optimizer=functools.partial(torch.optim.Adam, lr=0.005),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=20),
    )
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    from lightning.pytorch import seed_everything

    seed_everything(0)
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=64))
    python_keys = yaml.safe_load(Path(trainer.logger.log_dir, "hparams.yaml").read_text())
    _expected_run_config(python_keys)
    cli_keys = yaml.safe_load((run["version"] / "hparams.yaml").read_text())
    assert set(python_keys) == set(cli_keys)


def test_checkpoint_rebuilds_its_network_without_a_config(run):
    """Row 2: load_from_checkpoint(path) alone gives the trained network, weights included."""
    task = SpikingClassifier.load_from_checkpoint(run["ckpt"])
    assert isinstance(task.model, SpikingVGG)
    stored = torch.load(run["ckpt"], weights_only=True)["state_dict"]
    assert all(torch.equal(value, stored[key]) for key, value in task.state_dict().items())


# two more `spikenorm test` runs of the checkpoint (~15 s): slow. The default suite runs a task at an evaluation T
# (tests/test_event_digits.py, tests/test_norm_diagnostics_callback.py) and the checkpoint alone through the CLI
# (test_a_different_network_is_refused_with_the_differing_keys, test_predict_writes_per_step_logits_and_classes)
@pytest.mark.slow
def test_cli_test_from_a_checkpoint_alone_honours_eval_time_steps(run):
    """Rows 2 and 3: `spikenorm test --ckpt_path X` needs no config, and an evaluation T given on the command
    line is used (the loss equals the same checkpoint evaluated in Python at that T, and differs from T=4)."""
    losses, root = {}, run["folder"] / "eval_t"
    for steps in (1, 4):
        done = _from_checkpoint(
            run,
            "test",
            "--trainer.limit_test_batches=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
            f"--model.init_args.eval_time_steps={steps}",
        )
        losses[steps] = _printed_metric(done.stdout, "test/loss")
    task = SpikingClassifier.load_from_checkpoint(run["ckpt"], eval_time_steps=1)
    trainer = Trainer(limit_test_batches=2, logger=False, enable_progress_bar=False, enable_model_summary=False)
    expected = trainer.test(task, datamodule=DigitsDataModule(batch_size=64), verbose=False)[0]["test/loss"]
    assert losses[1] == pytest.approx(expected, rel=1e-5)
    assert losses[1] != pytest.approx(losses[4], rel=1e-3)
    assert (run["folder"] / "config.yaml").read_text() == USER_CONFIG  # row 5: configs went elsewhere
    saved = [yaml.safe_load(p.read_text()) for p in (root / "configs").glob("test-config*.yaml")]
    assert sorted(c["model"]["init_args"]["eval_time_steps"] for c in saved) == [1, 4]  # one file per run


def test_a_different_network_is_refused_with_the_differing_keys(run):
    """Row 4: CLI and Python refuse a checkpoint under another neuron or other norm options."""
    done = _from_checkpoint(
        run,
        "test",
        f"--trainer.default_root_dir={run['folder'] / 'refused'}",
        "--model.init_args.model.init_args.layers.neuron=if",
        check=False,
    )
    assert done.returncode != 0
    assert "different network" in done.stderr and "model.layers.neuron: 'lif' -> 'if'" in done.stderr
    with pytest.raises(ValueError, match=r"model\.layers\.norm_kwargs\.eps: \(absent\) -> 0\.001"):
        SpikingClassifier.load_from_checkpoint(
            run["ckpt"],
            model=SpikingVGG(
                "small", in_channels=1, layers=LayerSpec(norm_kwargs={"eps": 1e-3}, surrogate_kwargs={"alpha": 4.0})
            ),
        )


def test_predict_writes_per_step_logits_and_classes(run):
    """Row 11: `spikenorm predict` writes predictions (per-step logits, class) under the run's folder."""
    out = run["folder"] / "predict_root"
    done = _from_checkpoint(
        run,
        "predict",
        f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false",
    )
    path = out / "predictions.pt"
    assert str(path) in done.stdout
    predictions = torch.load(path, weights_only=True)
    data = DigitsDataModule(batch_size=64)
    data.setup("test")
    count = len(data.test_dataset)
    assert predictions["logits"].shape == (count, 4, 10) and predictions["class"].shape == (count,)
    assert torch.equal(predictions["class"], predictions["logits"].mean(1).argmax(-1))
    task = SpikingClassifier.load_from_checkpoint(run["ckpt"]).eval()
    x = torch.stack([data.test_dataset[i][0] for i in range(5)])
    with torch.no_grad():
        assert torch.allclose(predictions["logits"][:5], task(x).transpose(0, 1), atol=1e-6)
    assert (run["folder"] / "config.yaml").read_text() == USER_CONFIG


def test_fit_keeps_the_users_config_and_prints_a_syncable_wandb_folder(run):
    """Rows 5 and 12: the user's ./config.yaml is untouched, the config lands in the run's log folder, and the
    summary names the offline run folder that `wandb sync` takes (the one holding run-<id>.wandb)."""
    assert (run["folder"] / "config.yaml").read_text() == USER_CONFIG
    assert (run["version"] / "config.yaml").is_file()
    printed = re.search(r"wandb sync (\S+)", run["stdout"])
    assert printed, run["stdout"]
    assert list((run["folder"] / printed.group(1)).glob("run-*.wandb"))


def test_fit_marks_its_run_folder_finished_with_the_test_results_and_checkpoints(run):
    """run.json (spikenorm.run_status): written by the fit, `finished` only after the post-fit test, with the
    printed test accuracy, the best checkpoint that was tested and the last.ckpt."""
    status = read_run_status(run["version"])
    assert status is not None and status.status == "finished" and status.error is None
    assert status.results["test/acc"] == pytest.approx(_printed_metric(run["stdout"], "test accuracy"), abs=1e-4)
    assert Path(status.best_checkpoint).is_file() and Path(status.best_checkpoint).parent == run["ckpt"].parent
    assert Path(status.last_checkpoint) == run["ckpt"].resolve() and status.resumes == 0
    assert status.ended >= status.started and status.pid > 0 and "fit" in status.command


KILLER = """
import os, signal
from lightning.pytorch import Callback


class KillAt(Callback):
    \"\"\"SIGKILL this process after optimizer step ``step``: a crash at a known point, no cleanup.\"\"\"

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
"""


# three CLI processes (~45 s): slow. The default suite checks the same resume in-process bit for bit
# (tests/test_resume.py), `--ckpt_path last` through the CLI (tests/test_resume_matching.py) and a stop mid-run of
# the RL task (tests/test_rl_resume.py); the slow SIGKILL tests of tests/test_crash_logs.py and
# tests/test_rl_resume.py kill CLI processes too
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_last_gives_the_uninterrupted_weights(tmp_path):
    """Row 6: a fit killed with SIGKILL mid-epoch resumes with `--ckpt_path last` in the same log version and
    the same W&B run, and ends with weights bit-identical to an uninterrupted run with the same seed."""
    trainer = {**SHORT, "max_epochs": 2, "limit_train_batches": 10}
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    for folder in (straight, crashed):
        folder.mkdir()
        _recipe(folder, every_n_train_steps=3, **trainer)
    _spikenorm(straight, "fit", "--config", "recipe.yaml")

    last = crashed / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    (crashed / "killer.py").write_text(KILLER)  # the CLI runs with its working directory on sys.path
    killed = _spikenorm(
        crashed,
        "fit",
        "--config",
        "recipe.yaml",
        "--trainer.callbacks+=killer.KillAt",
        "--trainer.callbacks.step=7",
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    killed_at = int(torch.load(last, weights_only=True)["global_step"])
    assert killed_at == 6  # the last step save before the kill at step 7, mid-epoch 0 (10 steps an epoch)
    assert read_run_status(last.parent.parent).status == "running"  # nothing could write after SIGKILL

    resumed = _spikenorm(crashed, "fit", "--config", "recipe.yaml", "--ckpt_path", "last")
    assert f"resuming {Path('logs/quickstart/version_0/checkpoints/last.ckpt')}" in resumed.stderr
    assert sorted(p.name for p in (crashed / "logs" / "quickstart").iterdir()) == ["version_0"]
    reference = torch.load(
        straight / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == reference["global_step"] == 20
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    runs = sorted((crashed / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({run.name.rsplit("-", 1)[1] for run in runs}) == 1  # one W&B run, resumed
    with (crashed / "logs" / "quickstart" / "version_0" / "metrics.csv").open() as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert min(steps) < killed_at and max(steps) >= 19  # rows from before the crash were kept
    status = read_run_status(last.parent.parent)
    assert (status.status, status.resumes) == ("finished", 1)


DVS_GESTURE = Path(__file__).resolve().parents[1] / "recipes" / "dvsgesture_vggsnn_osr.yaml"


def _parsed(recipe: Path, *args: str):
    """The CLI's task, network and datamodule for a recipe, built without running anything."""
    from spikenorm.cli import SpikenormCLI

    return SpikenormCLI(args=["--config", str(recipe), "--trainer.logger=false", *args], run=False)


def test_time_steps_are_given_once_to_the_norms_and_linked_to_the_frames(monkeypatch, tmp_path):
    """The task's time_steps reach a bntt network's norms (and its recorded layer spec; not a tdbn one's) when the
    task is built, and a DVS datamodule's time_bins by a link; a disagreeing value given by the user is refused,
    not silently replaced."""
    from spikenorm.norm import BNTT

    monkeypatch.setattr(sys, "argv", ["spikenorm"])
    bntt = _parsed(QUICKSTART, "--model.init_args.time_steps=3", "--model.init_args.model.init_args.layers.norm=bntt")
    assert bntt.model.model.features[0][1].time_steps == 3 and isinstance(bntt.model.model.features[0][1], BNTT)
    tdbn = _parsed(QUICKSTART, "--model.init_args.time_steps=3")
    assert tdbn.model.hparams["model"]["init_args"]["layers"]["time_steps"] is None  # not needed: not in the config
    assert bntt.model.hparams["model"]["init_args"]["layers"]["time_steps"] == 3
    with pytest.raises(ValueError, match=r"BNTT was built for T=2 steps, not the T=4 it was given. T has one home"):
        _parsed(
            QUICKSTART,
            "--model.init_args.model.init_args.layers.norm=bntt",
            "--model.init_args.model.init_args.layers.time_steps=2",
        )
    gesture = _parsed(DVS_GESTURE, "--data.init_args.root=" + str(tmp_path))
    assert gesture.datamodule.hparams.time_bins == 20 and gesture.model.hparams.time_steps == 14
    with pytest.raises(SystemExit):  # time_bins disagrees with eval_time_steps
        _parsed(DVS_GESTURE, "--data.init_args.time_bins=12")
    with pytest.raises(ValueError, match=r"keep_steps=12 does not fit the task's time_steps=14"):
        _parsed(DVS_GESTURE, "--data.init_args.augmentation.init_args.keep_steps=12")
