#!/usr/bin/env bash
# Every check that needs a GPU as one command for a lent machine, whose time is short: the
# default steps budget at most 300 s, install included, and all they measured is in $OUT
# however the run ends.
#
#   make gpu-kit                                 # here, with internet: the wheels the GPU image lacks
#   bash benchmarks/gpu_check.sh                 # there (carry gpu_kit/): the default steps
#   bash benchmarks/gpu_check.sh learner brn     # a subset of: tests brn update learner overlap env
#                                                # (overlap and env: on request, not by default)
#   bash benchmarks/gpu_check.sh --plan [STEP…]  # each step, its limit and the total; runs nothing
#
# Each step runs under `timeout -k 5 LIMIT`: SIGTERM at its limit, SIGKILL 5 s later (the
# learner catches SIGTERM and may first finish a compile). Its output goes straight into
# $OUT/gpu_check.log, with no pipe, so a kill keeps every line, and the moment it ends its
# results are copied into $OUT (default benchmarks/results/gpu_check). $OUT ends with at most
# 8 files, side by side, each under 16 MiB:
#   gpu_check.log  tests_fast_path.xml  tests_triton_brn.xml  brn_kernel_<gpu>.json
#   update_throughput_<gpu>.json  learner_check_<gpu>.json  metrics.jsonl (the learner's rows,
#   kept even if learner_check is killed before it reports)  [learner_check_overlap_<gpu>.json]
#   [env_throughput_<gpu>.json]
# The benchmarks rewrite their JSON after every point and run the points that matter first,
# so a step cut by its limit still returns what it measured. The carried wheels are installed
# into /tmp/site (no index, no dependencies, no bytecode) and put on PYTHONPATH, so the
# image's own packages stay as they are. The limits are estimates: no run on a GPU yet.
#
# For a test of these mechanics on a CPU: GPU_CHECK_STUB=CMD runs `CMD STEP` in place of each
# step's command, and GPU_CHECK_LIMIT_S=S gives every step S seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-benchmarks/results/gpu_check}
BUDGET=300     # seconds, for the default steps and any other selection
GRACE=5        # timeout -k: SIGKILL this long after SIGTERM
MAX_FILES=8
MAX_BYTES=$((16 * 1024 * 1024))
SITE=/tmp/site
RESULTS=benchmarks/results  # where the benchmarks write (benchmarks/common.py)

plan=false
[[ ${1:-} == --plan ]] && { plan=true; shift; }
selected=${*:-tests brn update learner}
for name in $selected; do
    [[ " tests brn update learner overlap env " == *" $name "* ]] ||
        { echo "gpu_check: unknown step '$name' (known: tests brn update learner overlap env)" >&2; exit 2; }
done
wants() { [[ " $selected " == *" $1 "* ]]; }

# --- the steps: name, limit (s), the results it leaves ("-": none), command -----------------
NAMES=() LIMITS=() RESULT=() CMDS=()
add() { NAMES+=("$1"); LIMITS+=("$2"); RESULT+=("$3"); CMDS+=("$4"); }
PYTEST="$PY -m pytest -x --tb=short -v -p no:cacheprovider"
# A per-test limit (pytest-timeout, in gpu_kit/) turns a hang into a traceback and a junit file.
per_test() {  # decided before the install step runs: the kit's wheel counts as installed
    if compgen -G "gpu_kit/pytest_timeout-*.whl" > /dev/null || $PY -c "import pytest_timeout" 2> /dev/null; then
        echo "--timeout $1"
    fi
}
[ -d gpu_kit ] && add install 15 - "$PY -m pip install -q --upgrade --target $SITE --no-index --no-deps --no-compile gpu_kit/*.whl"
NEEDED="brax mujoco gymnasium tensorboard tqdm yaml matplotlib psutil flax optax pytest pytest_timeout"
add info 15 - "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c 'import importlib.util \
as u, torch, triton, jax; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", \
triton.__version__, \"jax\", jax.__version__, jax.devices()); print(\"missing:\", [m for m in \"$NEEDED\".split() \
if u.find_spec(m) is None])'"
if wants tests; then
    # CUDA-marked tests only: captured == eager, the compiled + captured + Triton update against the
    # eager reference (two torch.compiles and the Triton JIT), no host sync in acting or updating.
    add tests_fast_path 50 - "$PYTEST $(per_test 40) -m cuda --junitxml=$OUT/tests_fast_path.xml tests/test_capture.py"
    # The Triton kernels on CUDA tensors; a subset whose kernel variants (each a JIT compile) fit:
    # wide channels (several blocks), ensembles, split batches and the CrossQ update with Triton.
    add tests_triton_brn 30 - "$PYTEST $(per_test 25) -k 'wide or ensemble or large_batch or crossq_update' \
--junitxml=$OUT/tests_triton_brn.xml tests/test_triton_brn.py"
fi
# Triton vs Inductor vs eager, forward+backward as CUDA-graph replays, the target sizes (N >= 32k)
# only; one compile per point.
wants brn && add brn 30 "$RESULTS/brn_kernel_*.json" \
    "$PY -m benchmarks.brn_kernel --n 32768 131072 --c 256 1024 --impls triton compiled eager"
# Updates/s of the learner's CUDA path (compiled, captured, TF32) at the width and batch the
# auto regime gives 4,096 envs: one point, one compile.
wants update && add update 40 "$RESULTS/update_throughput_*.json" \
    "$PY -m benchmarks.update_throughput --device cuda --widths 1024 --batch-sizes 16384 --modes graphed \
--algos CrossQ --compare --rounds 3"
# Ant at 4,096 envs under the auto regime, end to end under a 24 GiB cap: steady-state sps/ups after the compiles, peak memory.
LEARNER_ARGS="--env ant --num-envs 4096 --eval-every 0 --checkpoint-every 0"
wants learner && add learner 65 "$RESULTS/learner_check_*.json runs/learner_check-*/metrics.jsonl" \
    "$PY -m benchmarks.learner_check --seconds 48 -- $LEARNER_ARGS"
# The same run with the env stepping while the updates run (two CUDA streams), on request: its
# steady-state sps beside the learner step's, and that it runs at all, decide the default.
wants overlap && add overlap 65 "$RESULTS/learner_check_overlap_*.json" \
    "$PY -m benchmarks.learner_check --name learner_check_overlap --seconds 48 -- $LEARNER_ARGS --set run.overlap=true"
# Brax on the GPU, generalized vs mjx (on request).
wants env && add env 45 "$RESULTS/env_throughput_*.json" \
    "$PY -m benchmarks.env_throughput --device cuda --num-envs 256 1024 4096 --min-time 1.0"
# Where the numeric targets stand, from what this run measured.
add targets 10 - "$PY -m benchmarks.targets"

total=0
for limit in "${LIMITS[@]}"; do total=$((total + ${GPU_CHECK_LIMIT_S:-$limit} + GRACE)); done
if $plan; then
    for i in "${!NAMES[@]}"; do
        printf '%-17s %4s s  %s\n' "${NAMES[$i]}" "${GPU_CHECK_LIMIT_S:-${LIMITS[$i]}}" "${CMDS[$i]}"
    done
    echo "total ${total} s (${#NAMES[@]} steps: each limit + ${GRACE} s kill grace) of a ${BUDGET} s budget"
    exit 0
fi
if ((total > BUDGET)); then
    echo "gpu_check: these steps can take ${total} s, over the ${BUDGET} s budget: run fewer (see --plan)" >&2
    exit 2
fi

# --- running -------------------------------------------------------------------------------
mkdir -p "$OUT" "$RESULTS"
LOG=$OUT/gpu_check.log
STAMP=$(mktemp)
export XLA_PYTHON_CLIENT_PREALLOCATE=false TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD$([ -d gpu_kit ] && echo ":$SITE")${PYTHONPATH:+:$PYTHONPATH}

say() { echo "$*"; echo "$*" >> "$LOG"; }

collect() {  # collect "GLOB…": copy the files the step wrote into $OUT, if small enough
    [[ $1 == - ]] && return
    local file
    for file in $1; do  # unquoted: expands the globs
        [[ -f $file && $file -nt $STAMP ]] || continue
        if (($(stat -c %s "$file") < MAX_BYTES)); then cp "$file" "$OUT/"; else say "   $file: over 16 MiB, not copied"; fi
    done
}

failed=()
current=- child=
# Stopped from outside: stop the step too, and keep what it wrote.
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"; collect "$current"
      say "== stopped by a signal"; exit 143' TERM INT
say "== $(date +%T) gpu_check: ${NAMES[*]} (at most ${total} s)"
for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]} limit=${GPU_CHECK_LIMIT_S:-${LIMITS[$i]}} current=${RESULT[$i]}
    cmd=${GPU_CHECK_STUB:+$GPU_CHECK_STUB $name}
    cmd=${cmd:-${CMDS[$i]}}
    say "== $(date +%T) $name [≤ $limit s] $cmd"
    touch "$STAMP"
    from=$(stat -c %s "$LOG")
    start=$SECONDS
    timeout -k "$GRACE" "$limit" bash -c "$cmd" >> "$LOG" 2>&1 &  # waited for below, so a signal reaches the trap at once
    child=$!
    wait "$child"
    code=$?
    collect "$current"
    current=- child=
    ((code == 0)) || failed+=("$name")
    lines=5
    [[ $name == info || $name == targets ]] && lines=40
    tail -c +$((from + 1)) "$LOG" | tail -n "$lines"
    say "== $name: exit $code$( ((code == 124 || code == 137)) && echo ' (time limit)') after $((SECONDS - start)) s"
done
rm -f "$STAMP"

count=$(find "$OUT" -type f | wc -l)
big=$(find "$OUT" -type f -size +$((MAX_BYTES / 1024))k)
((count <= MAX_FILES)) || say "warning: $OUT holds $count files (more than $MAX_FILES)"
[ -z "$big" ] || say "warning: over 16 MiB: $big"
say "== $(date +%T) done in ${SECONDS} s; failed: ${failed[*]:-none}; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $(( ${#failed[@]} > 0 ))
