"""Write ``outputs.pt``: what spikenorm 0.1.0 (commit 97576f0) computes from the files in this folder on fixed
inputs, so that tests can check that the current release loads them into the same networks (see
``tests/test_previous_release.py``). Run from the repository root after ``make_fixtures.sh``."""

from pathlib import Path

import torch

from spikenorm.fold import load_folded
from spikenorm.tasks import SpikingClassifier, SpikingTD3

HERE = Path(__file__).parent


def digits_input() -> torch.Tensor:
    return torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16


def main() -> None:
    outputs = {}
    x = digits_input()
    for name in ("quickstart", "quickstart_osr", "quickstart_bw", "quickstart_mpbn"):
        task = SpikingClassifier.load_from_checkpoint(HERE / f"{name}.ckpt", map_location="cpu").eval()
        with torch.no_grad():
            outputs[name] = task(x)
    folded = load_folded(HERE / "quickstart_mpbn_folded.pt")
    with torch.no_grad():
        outputs["quickstart_mpbn_folded"] = folded(x.unsqueeze(0).repeat(4, 1, 1, 1, 1))
    td3 = SpikingTD3.load_from_checkpoint(HERE / "quickstart_rl.ckpt", map_location="cpu").eval()
    obs = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs["quickstart_rl_actor"] = td3.actor(obs)
    for norm in ("tebn", "tab", "bntt"):
        stored = torch.load(HERE / f"{norm}_task.pt", weights_only=False)
        arguments = {k: v for k, v in stored["hyper_parameters"].items() if not k.startswith("_")}
        task = SpikingClassifier(**arguments).eval()
        task.load_state_dict(stored["state_dict"])
        with torch.no_grad():
            outputs[f"{norm}_task"] = task(x)
    torch.save(outputs, HERE / "outputs.pt")


if __name__ == "__main__":
    main()
