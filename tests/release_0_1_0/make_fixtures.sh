#!/usr/bin/env bash
# How the files in this folder were written: by spikenorm 0.1.0 at commit 97576f0 (before the renovation of issue
# 27), so that tests can prove that configs and checkpoints of that release keep loading. Run from the repository
# root with that commit checked out; it writes into tests/release_0_1_0/.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
small="--trainer.max_epochs 1 --trainer.limit_train_batches 2 --trainer.limit_val_batches 1 --trainer.logger false"
for recipe in quickstart quickstart_osr quickstart_bw quickstart_mpbn; do
  cp "recipes/$recipe.yaml" "$out/$recipe.yaml"
  (cd "$work" && WANDB_MODE=offline spikenorm fit --config "$out/$recipe.yaml" $small \
     --trainer.default_root_dir "$work/$recipe" --trainer.enable_progress_bar false >/dev/null 2>&1)
  cp "$(find "$work/$recipe" -name last.ckpt | head -1)" "$out/$recipe.ckpt"
done
# the folded model of the MPBN recipe, in the safe file format
cp "$(find "$work/quickstart_mpbn" -name '*folded*.pt' | head -1)" "$out/quickstart_mpbn_folded.pt"
cp recipes/quickstart_rl.yaml "$out/quickstart_rl.yaml"
(cd "$work" && WANDB_MODE=offline spikenorm fit --config "$out/quickstart_rl.yaml" --trainer.logger false \
   --model.init_args.total_env_steps 300 --model.init_args.warmup_steps 200 --model.init_args.eval_every 300 \
   --model.init_args.eval_episodes 1 --model.init_args.buffer_size 400 --model.init_args.batch_size 16 \
   --model.init_args.hidden '[16, 16]' --trainer.default_root_dir "$work/rl" --trainer.enable_progress_bar false \
   --trainer.callbacks.init_args.every_n_env_steps 250 --trainer.callbacks.init_args.num_batches 2 \
   --trainer.callbacks.init_args.batch_size 16 >/dev/null 2>&1)
cp "$(find "$work/rl" -name last.ckpt | head -1)" "$out/quickstart_rl.ckpt"
python - "$out" <<'PY'
import sys, torch
from spikenorm.models import LayerSpec, SpikingVGG
from spikenorm.tasks import SpikingClassifier
torch.manual_seed(0)
for norm in ("tebn", "tab", "bntt"):
    net = SpikingVGG(cfg=[8, "A"], in_channels=1, num_classes=10, layers=LayerSpec(norm=norm, time_steps=3))
    task = SpikingClassifier(net, time_steps=3)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, f"{sys.argv[1]}/{norm}_task.pt")
PY
ls -la "$out"
