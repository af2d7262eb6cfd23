"""Tests for spikenorm.loggers (automatic offline mode) and spikenorm.wandb_runs (reading offline runs back)."""

import struct
import zlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import offline_wandb, quiet_trainer
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader, TensorDataset

from spikenorm.loggers import WandbLogger, resolve_offline, wandb_api_key_available
from spikenorm.wandb_runs import read_offline_run

_WANDB_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_PROJECT", "NETRC", "WANDB_DIR")


@pytest.fixture
def no_wandb_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environment with no W&B key, no WANDB_MODE and an empty HOME; returns that HOME."""
    for var in _WANDB_ENV:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _write_netrc(home: Path, text: str) -> None:
    path = home / ".netrc"
    path.write_text(text)
    path.chmod(0o600)


# --- (a) the offline decision ----------------------------------------------------------------------


def test_no_key_means_offline(no_wandb_key: Path) -> None:
    assert not wandb_api_key_available()
    assert resolve_offline() is True
    assert WandbLogger(save_dir=str(no_wandb_key)).offline is True


def test_key_in_env_means_online(no_wandb_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_api_key_available()
    logger = WandbLogger(save_dir=str(no_wandb_key))
    assert logger.offline is False
    assert logger._experiment is None  # constructing the logger starts no run


def test_blank_key_in_env_is_no_key(no_wandb_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "  ")
    assert resolve_offline() is True


@pytest.mark.parametrize(
    ("netrc_text", "base_url", "offline"),
    [
        ("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n", None, False),
        ("machine example.com login user password secret\n", None, True),
        ("machine wandb.corp.net login user password secret\n", "https://wandb.corp.net", False),
        ("machine api.wandb.ai login user password secret\n", "https://wandb.corp.net", True),
        ("machine api.wandb.ai login user\n", None, True),  # entry without a key
        ("machine api.wandb.ai password\n", None, True),  # malformed
        ("this is not a netrc file\n", None, True),
    ],
)
def test_netrc_decides(
    no_wandb_key: Path, monkeypatch: pytest.MonkeyPatch, netrc_text: str, base_url: str | None, offline: bool
) -> None:
    _write_netrc(no_wandb_key, netrc_text)
    if base_url is not None:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    assert resolve_offline() is offline


def test_netrc_env_var_is_followed(no_wandb_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = no_wandb_key / "custom_netrc"
    custom.write_text("machine api.wandb.ai login user password secret\n")
    monkeypatch.setenv("NETRC", str(custom))
    assert resolve_offline() is False
    monkeypatch.setenv("NETRC", str(no_wandb_key / "missing_netrc"))
    assert resolve_offline() is True


@pytest.mark.parametrize(
    ("mode", "has_key", "offline"),
    [
        ("offline", True, True),
        ("dryrun", True, True),
        ("OFFLINE", True, True),
        ("online", False, False),
        ("disabled", False, False),
    ],
)
def test_wandb_mode_wins_over_key(
    no_wandb_key: Path, monkeypatch: pytest.MonkeyPatch, mode: str, has_key: bool, offline: bool
) -> None:
    monkeypatch.setenv("WANDB_MODE", mode)
    if has_key:
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_offline() is offline
    assert WandbLogger(save_dir=str(no_wandb_key)).offline is offline


def test_explicit_offline_wins(no_wandb_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_offline(False) is False
    assert WandbLogger(save_dir=str(no_wandb_key), offline=False).offline is False
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbLogger(save_dir=str(no_wandb_key), offline=True).offline is True


def test_auto_offline_turns_off_log_model(no_wandb_key: Path) -> None:
    with pytest.warns(UserWarning, match="log_model"):
        logger = WandbLogger(save_dir=str(no_wandb_key), log_model="all")
    assert logger.offline is True
    assert logger._log_model is False


def test_defaults_and_cli_signature(no_wandb_key: Path) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(WandbLogger, "logger")
    cfg = parser.parse_args(["--logger.name=run1", "--logger.prefix=p", f"--logger.save_dir={no_wandb_key}"])
    assert cfg.logger.offline is None and cfg.logger.project == "spikenorm"
    assert parser.get_defaults().logger.save_dir == "logs"
    logger = WandbLogger(**cfg.logger.as_dict())
    assert (logger._wandb_init["name"], logger.offline, logger._prefix) == ("run1", True, "p")


# --- reading offline runs --------------------------------------------------------------------------


def test_read_offline_run_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_offline_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="one run-"):
        read_offline_run(tmp_path)
    (tmp_path / "run-abc.wandb").write_bytes(b"not a wandb log")
    with pytest.raises(ValueError, match="not a W&B run log"):
        read_offline_run(tmp_path)


def test_read_offline_run_detects_corruption(tmp_path: Path) -> None:
    payload = b"\x00"  # any bytes; the checksum is wrong, so parsing never happens
    header = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    bad_crc = (zlib.crc32(payload, zlib.crc32(b"\x01")) + 1) & 0xFFFFFFFF
    (tmp_path / "run-abc.wandb").write_bytes(header + struct.pack("<IHB", bad_crc, 1, 1) + payload)
    with pytest.raises(ValueError, match="checksum"):
        read_offline_run(tmp_path)


# --- (b) a real offline run through Lightning ------------------------------------------------------


class _TinyClassifier(pl.LightningModule):
    """A linear classifier that remembers every value it logs, for comparison with the W&B run."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(4, 2)
        self.logged_loss: list[float] = []
        self.logged_acc: list[float] = []
        self._correct = 0
        self._seen = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.linear(x), y)
        self.log("train/loss", loss)
        self.logged_loss.append(loss.item())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._correct, self._seen = 0, 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._correct += int((self.linear(x).argmax(-1) == y).sum())
        self._seen += len(y)

    def on_validation_epoch_end(self) -> None:
        acc = torch.tensor(self._correct / self._seen)
        self.log("val/acc", acc)
        if not self.trainer.sanity_checking:  # sanity-check metrics never reach the logger
            self.logged_acc.append(acc.item())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_offline_run_holds_logged_metrics(tmp_path: Path) -> None:
    pl.seed_everything(0)
    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    module = _TinyClassifier()
    # a config larger than one 32 KiB block makes wandb split its record across blocks
    long_note = "spikes " * 10_000
    with offline_wandb(tmp_path):  # on leaving it, the service has written the run's last records (the exit record)
        logger = WandbLogger(save_dir=tmp_path / "logs", config={"note": long_note})
        assert logger.offline
        trainer = quiet_trainer(max_epochs=2, logger=logger, log_every_n_steps=1)
        try:
            trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))
        finally:
            logger.experiment.finish()

    run_dirs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    run = read_offline_run(run_dirs[0])

    assert run["finished"]
    assert run["config"]["lr"] == 0.1  # from save_hyperparameters, via log_hyperparams
    assert run["config"]["note"] == long_note  # from wandb.init
    acc = [row["val/acc"] for row in run["history"] if "val/acc" in row]
    loss = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(module.logged_acc) == 2 and acc == module.logged_acc
    assert len(module.logged_loss) == 8 and loss == module.logged_loss
    assert run["summary"]["val/acc"] == module.logged_acc[-1]
    assert run["summary"]["train/loss"] == module.logged_loss[-1]
