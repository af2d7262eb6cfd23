"""``diagnose`` under ``torch.distributed`` (2 CPU processes, gloo): every process gets the diagnosis of the union
of the batches.

One process group serves every case (``ddp_diagnostics.worker``): starting two processes costs seconds, so the cases
run one after the other inside it, and a failure names the case and rank.
"""

from __future__ import annotations

import math
from typing import Any

import ddp_diagnostics as ddp
import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port

from spikenorm.diagnostics import diagnose

# what the train pass computes (every other quantity comes from the eval pass)
TRAIN_PASS = ("train_eval_gap", "output")
# not compared: wall time; ``batches`` counts the batches this process was given
NOT_COMPARED = ("seconds", "batches")


def assert_same(got: Any, expected: Any, where: str) -> None:
    """Equal structure; floats within 1e-9 relative (1e-12 absolute near 0), everything else equal."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), f"{where}: keys {sorted(got)} != {sorted(expected)}"
        for key in expected:
            assert_same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), f"{where}: {len(got)} entries, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {got!r} != {expected!r}"
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def split(diagnosis: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the eval-pass quantities, the train-pass quantities) of ``diagnosis.to_dict()``."""
    eval_pass = {k: v for k, v in diagnosis.items() if k not in (*TRAIN_PASS, *NOT_COMPARED)}
    eval_pass["layers"] = {
        n: {k: v for k, v in d.items() if k not in TRAIN_PASS} for n, d in diagnosis["layers"].items()
    }
    train_pass = {"output": diagnosis["output"]}
    train_pass["layers"] = {n: d["train_eval_gap"] for n, d in diagnosis["layers"].items()}
    return eval_pass, train_pass


@pytest.fixture
def one_thread():
    """One torch thread per process (two processes share the machine; see test_diagnostics._one_thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_give_the_diagnosis_of_the_union_of_their_batches(tmp_path, one_thread):
    mp.spawn(ddp.worker, args=(free_port(), str(tmp_path)), nprocs=ddp.WORLD, join=True)
    everything = ddp.batches()
    side_by_side = [torch.cat(pair, dim=1) for pair in zip(*(ddp.rank_batches(r) for r in range(ddp.WORLD)))]
    for case, builder in ddp.BUILDERS.items():
        one = diagnose(builder(), everything)
        expected_eval, expected_train = split(one.to_dict())
        if case == "spikenorm":
            # spikenorm norms pool their training-mode batch statistics over processes (as in DDP training), so the
            # train pass normalises the j-th batches of both ranks together: one process on those batches side by side
            expected_train = split(diagnose(builder(), side_by_side).to_dict())[1]
        assert one.neurons and one.layers and one.output.kl > 1e-3
        for rank in range(ddp.WORLD):
            saved = torch.load(tmp_path / f"{case}-rank{rank}.pt")
            got_eval, got_train = split(saved["diagnosis"])
            assert_same(got_eval, expected_eval, f"{case} rank {rank}")
            assert_same(got_train, expected_train, f"{case} rank {rank}")
            assert set(saved["histograms"]) == set(one.histograms)
            for name, histogram in one.histograms.items():
                assert torch.equal(saved["histograms"][name], histogram), f"{case} rank {rank} histogram {name}"
