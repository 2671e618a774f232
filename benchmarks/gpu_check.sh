#!/usr/bin/env bash
# The one script for a lent GPU machine (issue 14): install with the README's own commands, run the
# GPU-marked tests, the speed benchmark, a CUDA robench attack (twice, for determinism, and once on the
# CPU for agreement), the suite grid of suites/cifar10-resnet20.yaml on CIFAR-shaped npz data, and the
# demo on CUDA. Every step's output goes to $OUT (or ./gpu-out); each step is timed.
#
#   bash benchmarks/gpu_check.sh            # about 6-8 minutes on an H200 with 16 cores
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
BIN=.venv/bin
step() {  # step NAME COMMAND...: run, time, keep the log, go on after a failure
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name" | tee -a "$OUT/summary.txt"
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log" >> "$OUT/summary.txt"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step install make install
step gpu-tests "$BIN/python" -m pytest -q -p no:cacheprovider -m gpu tests
step bench-gpu "$BIN/python" benchmarks/bench_gpu.py --n 10000 --batch-size 500 --repeats 2

# CIFAR-shaped data: 12,000 random 3x32x32 images (2,400 test points), a ResNet-20 trained one epoch.
"$BIN/python" - <<'EOF'
import numpy as np
rng = np.random.default_rng(0)
np.savez("gpu-out/cifar_shaped.npz", x=rng.random((12_000, 3, 32, 32), dtype=np.float32),
         y=rng.integers(0, 10, 12_000))
EOF
step train-resnet20 "$BIN/robench" train --defense softmax --arch resnet20 --dataset npz:gpu-out/cifar_shaped.npz \
    --epochs 1 --device cuda --allow-weak -q --out "$OUT/resnet20.pt"
ATTACK=(--model "$OUT/resnet20.pt" --attack fgsm --attack pgd:steps=20 --attack apgd:steps=20 --eps 0.00784313725490196
        --eps 0.03137254901960784 --threat gray-box --threat white-box --detector auto --n 2000 -q)
step attack-cuda-1 "$BIN/robench" attack "${ATTACK[@]}" --device cuda --batch-size auto --out "$OUT/run-cuda-1"
step attack-cuda-2 "$BIN/robench" attack "${ATTACK[@]}" --device cuda --batch-size auto --out "$OUT/run-cuda-2"
step attack-cuda-bf16 "$BIN/robench" attack "${ATTACK[@]}" --device cuda --batch-size auto --amp bf16 --compile \
    --out "$OUT/run-cuda-bf16"
step attack-cpu "$BIN/robench" attack "${ATTACK[@]}" --device cpu --batch-size 250 --threads 16 --out "$OUT/run-cpu"
step compare "$BIN/python" - <<'EOF'
import pandas as pd
a, b = (pd.read_csv(f"gpu-out/run-cuda-{i}/results.csv") for i in (1, 2))
print("CUDA run to run identical:", open("gpu-out/run-cuda-1/results.csv").read() == open("gpu-out/run-cuda-2/results.csv").read())
c = pd.read_csv("gpu-out/run-cpu/results.csv")
keys = ["attack", "eps", "threat", "detector"]
m = a.merge(c, on=keys, suffixes=("_cuda", "_cpu"))
m["gap_points"] = 100 * (m["robust_acc_cuda"] - m["robust_acc_cpu"]).abs()
print(m[keys + ["robust_acc_cuda", "robust_acc_cpu", "gap_points"]].to_string())
print("largest CUDA-CPU gap (points):", m["gap_points"].max())
EOF
sed -e 's#data/cifar10#gpu-out/cifar_shaped.npz#' -e 's#cifar10:#npz:#' -e 's#epochs: 100#epochs: 2#g' \
    -e 's#n: 1000#n: 2000#' -e 's#device: auto#device: cuda#' suites/cifar10-resnet20.yaml > "$OUT/suite.yaml"
step suite-grid "$BIN/robench" run "$OUT/suite.yaml" --out "$OUT/suite-run" -q
step demo-cuda "$BIN/robench" demo --device cuda --out "$OUT/demo"
echo "done; summary in $OUT/summary.txt"
