#!/usr/bin/env bash
# The speed part of the one GPU command: bench/speed.py under a hard wall budget, results straight into $OUT/speed.
# bench/README.md has the plan, the exact call and the expected seconds per section.
#
#   here, once:   bash bench/speed_gpu.sh wheels        # bench/gpu-wheels.txt -> .whl/ (git-ignored), prints its size
#   on the GPU:   the first part of the one call (bench/README.md has the whole call and the seconds per section):
#                 run(carry=[".whl"], timeout_s=595, command="bash bench/speed_gpu.sh install
#                     && bash bench/speed_gpu.sh run; <the -m gpu test>; bash bench/serve_gpu.sh --budget 200")
#                 install ~15 s; run <= 340 s (ends ~315 s on the plan below); $OUT/speed gets 4 files
#   dry run here: bash bench/speed_gpu.sh run                                           # no GPU: tiny CPU smoke
#
#   run [SECTIONS [BUDGET_S]] [bench/speed.py args...]
#       SECTIONS: comma list in the order to run (default: the plan below); BUDGET_S: the wall budget of this part
#       (default 340): no row starts after BUDGET_S-40, Python interrupts itself (SIGINT) at BUDGET_S-15, `timeout`
#       sends SIGINT at BUDGET_S-5 and SIGKILL at BUDGET_S. Whatever was measured is in $OUT/speed: RESULTS.md,
#       results.json and speed.png are rewritten after every row, log.txt as lines come. Exit 0: ran or stopped at
#       the deadline; 1: a section or row failed; 3: interrupted at the budget; 124/137: killed.
set -uo pipefail
cd "$(dirname "$0")/.."

PLAN=peak,t2i,control,nosync,graphs,control1,fp8,fp8scale,batch,pair,ablate,cache,cold,vae,dynamic,modes  # by priority: the deadline cuts the tail
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python   # a dev checkout; the GPU image has python3

case "${1:-}" in
wheels)
    rm -rf .whl
    # shellcheck disable=SC2046
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        $(sed -e 's/#.*//' bench/gpu-wheels.txt) || exit
    du -sh .whl
    echo "travels with the tree: $(git ls-files -z | du -ch --files0-from=- 2>/dev/null | tail -1 | cut -f1) tracked"
    ;;
install)
    if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        echo "[install] no CUDA device: skipped (a dry run here uses this environment's packages)"
        exit 0
    fi
    start=$SECONDS
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || exit
    echo "[install] $(ls .whl | wc -l) wheels in $((SECONDS - start))s"
    ;;
run)
    sections=${2:-$PLAN}
    budget=${3:-340}
    shift $(($# < 3 ? $# : 3))
    out=${OUT:-/tmp/speed-out}/speed
    mkdir -p "$out"
    export PYTHONPATH=$SITE:$PWD/src:$PWD PYTHONUNBUFFERED=1
    args=(--out "$out" --only "$sections" --deadline $((budget - 40)) --budget $((budget - 15)))
    note="[speed] budget ${budget}s: sections $sections"
    if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        note="$note; no CUDA device: tiny CPU smoke run (the same code, figures mean nothing)"
        args+=(--tiny --steps 2 --short-steps 1)
    fi
    {
        echo "$note"
        nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,memory.used --format=csv,noheader 2>/dev/null
        timeout -s INT -k 5 $((budget - 5)) "$PY" bench/speed.py "${args[@]}" "$@"
        status=$?
        echo "[speed] exit $status"
        exit $status
    } 2>&1 | tee "$out/log.txt"
    exit "${PIPESTATUS[0]}"
    ;;
*)
    echo "usage: bash bench/speed_gpu.sh wheels | install | run [SECTIONS [BUDGET_S]] [bench/speed.py args]" >&2
    exit 2
    ;;
esac
