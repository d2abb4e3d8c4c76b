#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_throughput.py needs on a bare GPU machine into
# .cache/device-wheels/ (git-ignored), for benchmarks/gpu_device_run.sh to install there
# with `pip install --no-deps`. Run here, on a machine that reaches PyPI:
#
#     bash benchmarks/fetch_device_wheels.sh          # then pass carry=[".cache/device-wheels"]
#
# Assumes the GPU machine is the workplace's nvidia-h200 image (.library/device/KINDS.md,
# read 2026-11): x86-64, python3 3.12, torch 2.11.0+cu130, accelerate 1.15, and already
# installed there: huggingface_hub 1.33 (transformers 5.24 and datasets 5.2 ask >= 1.31),
# tokenizers 0.23.2 (transformers asks >=0.23.1,<0.24), safetensors 0.8.0 (>= 0.8.0), numpy,
# pandas, pyarrow (datasets 5.2 asks >= 24; not checked there), xxhash, fsspec, pyyaml,
# jinja2, psutil, tqdm, packaging, typer. It has no bitsandbytes, trl, datasets, dill or
# multiprocess, and an older transformers (5.17 seen there) and peft.
#
# Carried (one version each; pip would refuse two):
#   transformers 5.24.0, peft 0.22.0  peft as tested here; transformers one below (5.25 asks
#                                     huggingface_hub >= 2.4, the image has 1.33);
#   regex                             transformers 5.24 checks regex >= 2025.10.22 at import
#                                     and the image's version is not known;
#   bitsandbytes 0.50.2               for the 4-bit (QLoRA) rows. Its manylinux wheel holds
#                                     one library per CUDA version (43 MB); the copy here
#                                     keeps the CUDA 13.0 and 13.2 ones (torch 2.11+cu130
#                                     loads libbitsandbytes_cuda130.so) and the CPU one: 7 MB;
#   trl 1.16.0, datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19 (py312)
#                                     for the TRL rows (TRL imports datasets, which needs the
#                                     other two);
#   liger-kernel 0.8.5                for the workbench-liger row (its fused linear
#                                     cross-entropy). Pure Python (0.9 MB); it asks torch >=
#                                     2.1.2 and triton >= 2.3.1, which the image has (triton
#                                     3.6.0 comes with its torch), so no dependency is carried.
# All together 24 MiB (2026-12-01), with the project's tree (~3 MiB) well under the 64 MiB a
# device call may carry; the script fails if the two together pass 60 MiB.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=.cache/device-wheels
LIMIT_MIB=60

git check-ignore -q "$DEST" || { echo "$DEST is not git-ignored: it would travel twice" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$TMP" \
    transformers==5.24.0 peft==0.22.0 regex==2026.11.19 bitsandbytes==0.50.2 \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5

# bitsandbytes without the libraries of other CUDA versions, ROCm and XPU; RECORD rewritten
# to match, so pip installs it as the same package.
"$PYTHON" - "$TMP" "$DEST" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

tmp, dest = Path(sys.argv[1]), Path(sys.argv[2])
keep = re.compile(r"libbitsandbytes_(cuda13[02]|cpu)\.so$")
for wheel in sorted(tmp.glob("*.whl")):
    if not wheel.name.startswith("bitsandbytes-"):
        wheel.rename(dest / wheel.name)
        continue
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(
        dest / wheel.name, "w", zipfile.ZIP_DEFLATED
    ) as out:
        dropped = {
            i.filename
            for i in src.infolist()
            if re.search(r"libbitsandbytes_\w+\.so$", i.filename) and not keep.search(i.filename)
        }
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(l for l in lines if l.split(",")[0] not in dropped).encode()
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    print(f"{wheel.name}: left out {len(dropped)} libraries ({', '.join(sorted(Path(d).name for d in dropped))})")
EOF

wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}')
ls -l "$DEST"
echo "wheels $((wheels / 1024)) KiB + tree $((tree / 1024)) KiB = $(((wheels + tree) / 1048576)) MiB (limit 64 MiB)"
if (( wheels + tree > LIMIT_MIB * 1048576 )); then
    echo "over ${LIMIT_MIB} MiB: carry fewer wheels" >&2
    exit 1
fi
