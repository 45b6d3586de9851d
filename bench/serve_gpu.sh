#!/usr/bin/env bash
# The whole service on a lent GPU machine (issue 20): `reimagine serve --model random-full`, measured end to end by
# bench/serve_gpu.py, which writes SERVE_GPU.md and serve_gpu.json to $OUT after every row and stops before --budget.
#
#   here, once:   bash bench/speed_gpu.sh wheels     # bench/gpu-wheels.txt (the one list) -> .whl/
#   on the GPU:   run(command="bash bench/serve_gpu.sh --budget 200", carry=[".whl"], timeout_s=260)
#                 (after `bash bench/speed_gpu.sh install && bash bench/speed_gpu.sh run` in the same command, the
#                 wheels are already installed)
#   on CPU:       PYTHON=.venv/bin/python bash bench/serve_gpu.sh --model tiny --budget 400 --clients 2 --extras ''
#   then here:    copy SERVE_GPU.md and serve_gpu.json from the reply's files_at into bench/ and commit.
#
# Arguments go to bench/serve_gpu.py (--budget S, --load-s S, --clients N, --steps N, --warmup RATIOS, --extras ...).
set -euo pipefail
cd "$(dirname "$0")/.."

site=${SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
    # The one wheel list (bench/gpu-wheels.txt), installed once per machine by its one installer.
    [ -d "$site/fastapi" ] || bash bench/speed_gpu.sh install || exit
    export PYTHONPATH="$site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
exec "$python" bench/serve_gpu.py --python "$python" "$@"
