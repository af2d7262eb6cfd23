#!/usr/bin/env bash
# GPU check: at most 10 minutes on one CUDA GPU, no network. Writes benchmarks/results/gpu.md (or OUTPUT):
#   machine  GPU name, driver, CUDA, torch version, date;
#   (a)      the gpu-marked tests (tests/test_gpu.py) and the CUDA runs of the device tests (the `device`
#            fixture of tests/conftest.py) of neurons, fused kernels, norms, fold, recalibration, OSR/online;
#   (b)      benchmarks/compare.py on CUDA in fp32, bf16 autocast and torch.compile (spikenorm, SpikingJelly,
#            snnTorch side by side), its report included: fastest vs fastest (each library's fastest of these
#            modes, spikenorm's variants included, chosen by the script), the targets, the per-mode tables, the
#            neuron alone against the elementwise floor in float32 and bfloat16 (compiled-bf16 is left out: its
#            three compilations do not fit the step's time);
#   (c)      one-epoch training throughput on synthetic CIFAR-10-shaped data of the CIFAR recipes' networks
#            (SpikingResNet19 T=4 tdBN, SpikingResNet19 T=2 MPBN, SpikingVGG vggsnn OSR online), fp32 and
#            bf16-mixed: benchmarks/gpu_throughput.py, each epoch cut after STEP_SECONDS (default 22) and
#            extrapolated from its steady-state rate.
# Each step runs under its own `timeout` (a: 200 s, b: 140 s, c: 3 x 70 s; 550 s in all, plus ~10 s for the
# machine description), so a hung step cannot eat the others' time; a failed or timed-out step is recorded in the report, the next step runs, and
# the script exits 1 at the end if any step failed. Without CUDA it writes nothing and exits 1 (the gpu tests
# would only be deselected; `pytest -m gpu` is a usage error there, exit code 4, see tests/conftest.py).
#
# Usage (from anywhere; it runs in the repository root):
#   benchmarks/gpu_check.sh [OUTPUT]                         # default OUTPUT: benchmarks/results/gpu.md
#   GPU_CHECK_DRY_RUN=1 benchmarks/gpu_check.sh /tmp/gpu.md  # CPU, tiny sizes: the script and its report only
#
# Carrying the project to a GPU machine without a registry, without replacing its (CUDA) torch:
#   1. on the GPU machine, pin the torch stack it has:
#        pip freeze | grep -E '^(torch|torchvision|triton)==' > constraints.txt
#   2. on a connected machine with the same Python version and platform (e.g. CPython 3.11, manylinux x86_64),
#      with constraints.txt copied there and its local tags dropped (`sed -i 's/+.*//' constraints.txt`; the
#      default index serves torch 2.x+cuXXX as plain 2.x):
#        pip wheel -w wheels -c constraints.txt ".[all,test,bench]" setuptools
#      (setuptools: the build backend, so the offline install can build spikenorm itself); then delete the
#      torch, torchvision, triton and nvidia-* wheels from wheels/ (gigabytes the GPU machine already has) and
#      copy wheels/ and the repository over;
#   3. on the GPU machine, in the repository:
#        pip install --no-index --find-links wheels -c constraints.txt -e ".[all,test,bench]"
#      The constraints keep the installed torch: pip finds it satisfied and never looks for another; if the
#      project's ranges excluded it, pip would stop with a resolution error instead of replacing it. (The
#      alternative, `pip install --no-index --no-deps wheels/*.whl` and then `pip install --no-deps -e .`,
#      skips dependency resolution altogether: it cannot replace torch, but it cannot tell you about a
#      missing or incompatible dependency either.)
set -euo pipefail
cd "$(dirname "$0")/.."

dry="${GPU_CHECK_DRY_RUN:-0}"
if [ "$dry" = 1 ] && [ $# -eq 0 ]; then
    echo "GPU_CHECK_DRY_RUN=1 needs an OUTPUT path (it must not replace benchmarks/results/gpu.md)" >&2
    exit 2
fi
out="${1:-benchmarks/results/gpu.md}"
STEP_SECONDS="${STEP_SECONDS:-22}"  # (c): seconds of each epoch before it is cut and extrapolated
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()

if [ "$dry" != 1 ] && ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: torch.cuda.is_available() is False on this machine; nothing was checked" >&2
    exit 1
fi

# step TITLE SECONDS REPORT CMD...: run CMD under `timeout SECONDS`; append to the report the command, its
# outcome, the markdown file REPORT if CMD wrote it (its headings moved two levels down) and, unless CMD
# passed and wrote REPORT, the tail of CMD's output. A failure is recorded, not fatal.
step() {
    local title="$1" limit="$2" report="$3"
    shift 3
    local log="$work/log" rc=0 start=$SECONDS
    echo "gpu_check.sh: $title (at most $limit s)" >&2
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1 || rc=$?
    local took=$((SECONDS - start))
    {
        echo "## $title"
        echo
        echo "\`$*\`"
        echo
        if [ "$rc" -eq 0 ]; then
            echo "Passed in $took s."
        elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "**FAILED: timed out after $limit s.**"
        else
            echo "**FAILED: exit code $rc after $took s.**"
        fi
        echo
        if [ -s "$report" ]; then
            sed -E 's/^(#+) /\1## /' "$report"
            echo
        fi
        if [ "$rc" -ne 0 ] || [ ! -s "$report" ]; then
            echo '```text'
            tail -n 60 "$log"
            echo '```'
            echo
        fi
    } >>"$out"
    if [ "$rc" -ne 0 ]; then
        failed+=("$title")
    fi
    return 0
}

# pytest in one process (-n 0; the default suite runs in parallel workers): the tests share one device
device_tests=(tests/test_neurons.py tests/test_fused_neurons.py tests/test_norm.py tests/test_fold.py
    tests/test_recalibrate.py tests/test_online.py)
if [ "$dry" = 1 ]; then
    device=cpu
    # test_gpu.py is collected (imported) and its tests deselected; one device test runs
    tests=(python -m pytest -p no:cacheprovider -n 0 -q -rfE -k "membrane_norm_hook or test_gpu" tests/test_gpu.py
        tests/test_neurons.py)
    compare=(python benchmarks/compare.py --device cpu --modes fp32 --batch 2 --time-steps 2 --size 8 --cfg 8 A
        --neuron-shape 2 2 4 4 4 --repeats 1 --neuron-repeats 1 --output "$work/compare.md")
    cases=(vggsnn_osr)
    throughput_args=(--samples 8 --batch-size 4 --warmup-batches 1 --network-arg "SpikingVGG.cfg=[8, A, 16]")
else
    device=cuda
    # the gpu tests, and the device tests' cuda runs (their cpu runs are the default suite's)
    tests=(python -m pytest -p no:cacheprovider -n 0 -q -rfE --durations=15 -m "gpu or not slow" -k "cuda or test_gpu"
        tests/test_gpu.py "${device_tests[@]}")
    compare=(python benchmarks/compare.py --device cuda --modes fp32,bf16,compiled --output "$work/compare.md")
    cases=(resnet19_tdbn resnet19_mpbn vggsnn_osr)
    throughput_args=(--max-seconds "$STEP_SECONDS")
fi

mkdir -p "$(dirname "$out")"
python - "$device" "$dry" >"$out" <<'EOF'
import datetime
import platform
import subprocess
import sys

import torch

device, dry = sys.argv[1], sys.argv[2] == "1"
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print("# GPU check\n")
print(f"benchmarks/gpu_check.sh{' (GPU_CHECK_DRY_RUN=1: CPU, tiny sizes)' if dry else ''}, {now}.\n")
if device == "cuda":
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = "unknown (no nvidia-smi)"
    print(f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}")
    print(f"- driver {driver}, CUDA (torch build) {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
else:
    print("- GPU: none (dry run on the CPU)")
print(f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}\n")
EOF

step "(a) gpu tests and the device tests on $device" 200 /dev/null "${tests[@]}"
step "(b) compare.py on $device" 140 "$work/compare.md" "${compare[@]}"
for case in "${cases[@]}"; do
    step "(c) one-epoch throughput: $case on $device" 70 "$work/$case.md" \
        python benchmarks/gpu_throughput.py --device "$device" --cases "$case" "${throughput_args[@]}" \
        --output "$work/$case.md"
done

if [ ${#failed[@]} -gt 0 ]; then
    printf -v listed '%s; ' "${failed[@]}"
    echo "**Failed steps:** ${listed%; }." >>"$out"
    echo "gpu_check.sh: failed: ${listed%; }; report in $out" >&2
    exit 1
fi
echo "All steps passed." >>"$out"
echo "gpu_check.sh: all steps passed; report in $out" >&2
