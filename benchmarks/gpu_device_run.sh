#!/usr/bin/env bash
# The one command for a lent GPU machine (issue 12): install the carried wheels, then run
# benchmarks/gpu_throughput.py within a total time limit, and leave its tables, a JSON of
# every figure and the logs under $OUT (the device tool brings that folder back).
#
# First, here: bash benchmarks/fetch_device_wheels.sh   (fills .cache/device-wheels/)
# Then, through the device tool, in one call:
#     run(command="bash benchmarks/gpu_device_run.sh", carry=[".cache/device-wheels"],
#         timeout_s=600)
# Arguments go to gpu_throughput.py (e.g. `--shapes 0.5b,3b`). On the H200 of 2026-12-04
# (a slow host: rows took 73-93 s) the default run's CORE rows fill most of the 9 minutes;
# --budget skips the rows that do not fit and says so. A dry run without a GPU:
#     PYTHON=.venv/bin/python WHEELS=none OUT=/tmp/gpu-out bash benchmarks/gpu_device_run.sh --smoke
#
# $OUT receives (each at most a few MB; the tool brings back 8 files):
#   device.log    everything printed, this script's steps and the benchmark's progress;
#   tables.md     the two tables (throughput; measured vs estimated peak);
#   results.json  every row's raw figures, memory estimate parts included (rewritten after
#                 each variant, so a run cut short still leaves what it measured);
#   workers.log   the last 40 lines of each variant's process (why a row failed);
#   profiles.md   the workbench rows' profiled steps: wall vs kernel time, busiest ops.
# Environment: PYTHON (python3), WHEELS (.cache/device-wheels; "none": install nothing),
# OUT (./gpu-out when unset), LIMIT (seconds for everything, 570), SITE (where the wheels go).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.cache/device-wheels}
OUT=${OUT:-$PWD/gpu-out}
LIMIT=${LIMIT:-570}
SITE=${SITE:-/tmp/device-site}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
start=$(date +%s)
mkdir -p "$OUT"

elapsed() { echo $(($(date +%s) - start)); }

main() {
    echo "## machine ($(date -u +%FT%TZ))"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 \
        || echo "no nvidia-smi"
    "$PYTHON" --version

    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if [[ "$WHEELS" != none && ${#wheels[@]} -gt 0 ]]; then
        echo "## installing ${#wheels[@]} carried wheels into $SITE"
        # A wheel is a zip of what goes into site-packages: extracting them is what pip
        # --target does for these (no scripts, no dependencies), in seconds instead of the
        # 49 s pip and eight import checks took on the 2026-12-04 machine. pip is the fallback.
        if ! "$PYTHON" - "$SITE" "${wheels[@]}" <<'PY'
import sys
import zipfile

site, *wheels = sys.argv[1:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
PY
        then
            echo "extracting failed; pip, one wheel at a time:"
            for wheel in "${wheels[@]}"; do
                "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                    --upgrade --target "$SITE" "$wheel" || echo "left out $wheel"
            done
        fi
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        # A carried package that does not import there is dropped, so the image's own
        # version (if any) is used instead; the rows that need a missing one say so. One
        # process checks them all (torch and transformers load once), in dependency order.
        "$PYTHON" - "$SITE" <<'PY'
import glob
import importlib
import os
import shutil
import sys

site = sys.argv[1]
for pkg in ("regex", "transformers", "peft", "bitsandbytes", "dill", "multiprocess",
            "datasets", "trl", "liger_kernel"):
    if not os.path.isdir(os.path.join(site, pkg)):
        continue
    try:
        importlib.import_module(pkg)
    except Exception as err:
        print(f"carried {pkg} does not import, using the image's own: {err!r}"[:300])
        found = glob.glob(os.path.join(site, pkg + "-*.dist-info"))
        for path in [os.path.join(site, pkg), *found]:
            shutil.rmtree(path, ignore_errors=True)
        for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
PY
        echo "(installed after $(elapsed) s)"
    fi

    "$PYTHON" -c '
from importlib import metadata
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets",
             "huggingface_hub", "tokenizers", "safetensors", "regex", "pyarrow", "fsspec"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "(not installed)")
'

    left=$((LIMIT - $(elapsed)))
    echo "## benchmark: $left s left ($(elapsed) s used)"
    timeout -k 10 "$left" "$PYTHON" benchmarks/gpu_throughput.py --budget $((left - 15)) \
        --out "$OUT" "$@"
    status=$?
    if [[ $status -ne 0 ]]; then
        echo "gpu_throughput.py ended with status $status (124: cut at the time limit); what it" \
            "measured so far is in $OUT/results.json"
    fi
    echo "## done after $(elapsed) s"
    ls -l "$OUT"
    return $status
}

main "$@" 2>&1 | tee -a "$OUT/device.log"
exit "${PIPESTATUS[0]}"
