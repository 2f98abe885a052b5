#!/usr/bin/env bash
# Every check that needs a GPU, as one run for a lent machine. Device time is short, so each
# step has its own time limit (a slow one cannot eat the rest) and steps can be picked:
#
#   make gpu-kit                                    # here, with internet: wheels the GPU image lacks
#   bash benchmarks/gpu_check.sh                    # there (carry gpu_kit/): default steps, ≤ 9 min
#   bash benchmarks/gpu_check.sh tests brn          # a subset of: tests brn update learner env (env: not by default)
#
# The image brings torch, triton, jax (CUDA) and most libraries; gpu_kit/ adds brax, mujoco,
# mujoco-mjx, gymnasium and a few others, installed without dependencies. Everything lands in
# one archive, $OUT/gpu_check.tgz (OUT defaults to benchmarks/results): the log,
# benchmarks/results/*_<gpu>.{json,png}, the learner's metrics and sampled GPU memory.
# The benchmarks rewrite their JSON after every point, so a step cut by its limit still
# returns what it measured; the points that matter most run first. The default steps fit
# one device call (at most 600 s) with room to pack the archive. Not yet run on a GPU: the
# limits are estimates for an H100 (each torch.compile of an update: ~10-20 s).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
PY=${PY:-python3}
LOG=$OUT/gpu_check.log
STEPS=${*:-tests brn update learner}
mkdir -p "$OUT" runs
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false TRITON_INTERPRET=0 PYTHONUNBUFFERED=1

step() {  # step SECONDS COMMAND...: run with a limit, log it, go on whatever happens
    local limit=$1; shift
    echo "== $(date +%T) [≤ $limit s] $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | grep -v "Failed to import warp" | tee -a "$LOG"
    echo "== exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

[ -d gpu_kit ] && step 30 $PY -m pip install -q --no-index --no-deps gpu_kit/*.whl
step 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 30 $PY -c "import torch, triton, jax, brax; print('torch', torch.__version__, 'triton', triton.__version__, \
'jax', jax.__version__, jax.devices(), 'brax', brax.__version__)"
# Issue 6/7 correctness: the Triton kernels on CUDA tensors (~100 kernel variants to JIT), the
# captured update and no host sync (several torch.compiles); a limit each, so neither starves.
if wants tests; then
    step 70 $PY -m pytest -q -p no:cacheprovider tests/test_fast_path.py
    step 70 $PY -m pytest -q -p no:cacheprovider tests/test_triton_brn.py
fi
# Issue 6: Triton (eager and compiled) vs Inductor vs eager reference, fwd+bwd, GB/s against
# the peak; the target sizes (N >= 32k) first. Two compiles per point.
wants brn && step 100 $PY -m benchmarks.brn_kernel --n 32768 131072 8192 512 \
    --impls triton triton_compiled compiled eager
# Issue 7: updates/s, eager vs captured, CrossQ vs SAC (and bf16) at the 4096 presets' batch;
# width 1024 (ant, humanoid) first, then 512 (the others), then the paper's 2048.
wants update && step 100 $PY -m benchmarks.update_throughput --device cuda --widths 1024 512 2048 \
    --batch-sizes 16384 --compare-batch 16384 --modes eager graphed --rounds 3 --compare
# Issue 7: the ant-4096 preset end to end (sps and ups in the metrics; memory sampled every 2 s).
if wants learner; then
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv -l 2 > "$OUT/gpu_memory.csv" &
    sampler=$!
    step 110 $PY -m crossq_gpu.learner --preset ant-4096 --total-steps 400000000 --log-every 40960 \
        --eval-every 0 --checkpoint-every 0 --out runs/gpu_check_ant
    kill $sampler
fi
# Issue 5/7: Brax on the GPU, generalized vs mjx.
wants env && step 45 $PY -m benchmarks.env_throughput --device cuda --num-envs 256 1024 4096 --min-time 1.0
# Where issues 6 and 7 stand, from what this run measured.
step 15 $PY -m benchmarks.targets --memory-csv "$OUT/gpu_memory.csv"
tar czf "$OUT/gpu_check.tgz" "$LOG" benchmarks/results/*_nvidia_* "$OUT/gpu_memory.csv" \
    runs/gpu_check_ant/metrics.jsonl 2>/dev/null
echo "wrote $OUT/gpu_check.tgz"
