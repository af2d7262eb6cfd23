"""Run the CaRe-BN paper's continuous-control script (``main.py`` of xuzijie32/CaRe-BN) and time its env steps.

Used by ``rl_throughput.py`` as a subprocess; the official code is never copied: it is imported from the folder
given as the first argument (``git archive`` of a checkout: ``CaRe-BN/continuous_control``). What this adds, from
outside that folder, before ``main.py`` runs (``runpy``, as ``python main.py ...`` would run it):

* a fix for one crash: the official ``TD3.__init__`` builds ``SAN.ANN_Actor(..., BN=BN)``, which takes no ``BN``
  argument, so ``--spiking_neurons ANN`` raises ``TypeError``; the keyword is dropped (the ANN actor has no BN);
* torch's intra-op threads (the second argument), as the in-process loops set them;
* timestamps: one after every ``ReplayBuffer.add`` (the last thing of an env step that trains nothing) and one after
  every ``TD3.train`` / ``DDPG.train`` (the end of an env step that trains), unchanged otherwise.

The script runs in the current folder (it writes ``./results`` and ``./models`` there). On exit one line
``RESULT {json}`` holds ``step_ends`` (seconds since start at the end of each env step: after its update when it
made one, else after its ``add``), ``updates`` and ``total_s``.

    python official_carebn.py PATH/CaRe-BN/continuous_control 1 --env Hopper-v5 --spiking_neurons ANN \\
        --start_timesteps 500 --max_trainsteps 2000 --eval_freq 1000000000
"""

from __future__ import annotations

import json
import runpy
import sys
import time


def main() -> None:
    folder, threads, arguments = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    sys.path.insert(0, folder)
    import torch

    torch.set_num_threads(threads)
    import actor_critic  # noqa: I001  (the official modules, from ``folder``)
    import SAN
    import utils

    start = time.perf_counter()
    step_ends: list[float] = []
    updates = 0
    ann_init = SAN.ANN_Actor.__init__

    def ann_actor_init(self, state_dim, action_dim, max_action, BN=None):  # noqa: N803  (the official keyword)
        ann_init(self, state_dim, action_dim, max_action)

    add = utils.ReplayBuffer.add

    def timed_add(self, *args):
        add(self, *args)
        step_ends.append(time.perf_counter() - start)

    def timed_train(train):
        def wrapper(self, *args, **kwargs):
            nonlocal updates
            result = train(self, *args, **kwargs)
            updates += 1
            step_ends[-1] = time.perf_counter() - start  # the update ends this env step
            return result

        return wrapper

    SAN.ANN_Actor.__init__ = ann_actor_init
    utils.ReplayBuffer.add = timed_add
    for algorithm in (actor_critic.TD3, actor_critic.DDPG):
        algorithm.train = timed_train(algorithm.train)
    sys.argv = [f"{folder}/main.py", *arguments]
    runpy.run_path(f"{folder}/main.py", run_name="__main__")
    result = {"step_ends": step_ends, "updates": updates, "total_s": time.perf_counter() - start}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
