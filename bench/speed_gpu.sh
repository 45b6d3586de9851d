#!/usr/bin/env bash
# bench/speed.py on a lent GPU machine (see /work/.library/device/README.md), in commands of < 10 minutes.
#
#   here, once:   bash bench/speed_gpu.sh wheels          # diffusers, transformers, torchao, pydantic... -> .whl/
#   on the GPU:   run(command="bash bench/speed_gpu.sh run peak,t2i,control", carry=[".whl"], timeout_s=600)
#                 run(command="bash bench/speed_gpu.sh run sizes", carry=[".whl"])
#                 run(command="bash bench/speed_gpu.sh run batch,cache,fp8", carry=[".whl"])
#                 run(command="bash bench/speed_gpu.sh run ablate", carry=[".whl"])
#                 run(command="bash bench/speed_gpu.sh run cold", carry=[".whl"])   # twice: empty, then warm cache
#   then here:    copy RESULTS.md, results.json, speed.png from the reply's files_at into bench/ and commit.
#
# Results accumulate in /tmp/speed on the device while it stays warm; a fresh machine is seeded from the committed
# bench/results.json (kept only if it came from the same GPU). Extra arguments go to bench/speed.py.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
wheels)
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qsx '/.whl/' "$exclude" || echo '/.whl/' >>"$exclude"
    # The GPU image has torch 2.11, tokenizers, safetensors, huggingface-hub, numpy, pillow, matplotlib, opencv;
    # torchao 0.18 is the release built for torch 2.11.
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        diffusers==0.42.1 transformers==5.24.0 torchao==0.18.0 pydantic==2.14.4 pydantic-core==2.50.5 \
        pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0 \
        importlib-metadata==10.2.0
    du -sh .whl
    ;;
run)
    sections=${2:-peak,t2i,control}
    shift 2 || shift $#
    site=${SITE:-/tmp/site}
    if [ ! -f "$site/.installed" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
        touch "$site/.installed"
    fi
    export PYTHONPATH=$site:$PWD/src PYTHONUNBUFFERED=1
    mkdir -p /tmp/speed
    [ -f /tmp/speed/results.json ] || cp bench/results.json /tmp/speed/ 2>/dev/null || true
    nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,memory.used --format=csv,noheader || true
    status=0
    python3 bench/speed.py --only "$sections" --out /tmp/speed "$@" 2>&1 | grep -v -e Warning -e 'experimental feature' \
        | tee "/tmp/speed/log-${sections//,/-}.txt" || status=$?
    cp /tmp/speed/RESULTS.md /tmp/speed/results.json /tmp/speed/speed.png "${OUT:-/tmp}/" 2>/dev/null || true
    exit "$status"
    ;;
*)
    echo "usage: bash bench/speed_gpu.sh wheels | run SECTIONS [bench/speed.py args]" >&2
    exit 2
    ;;
esac
