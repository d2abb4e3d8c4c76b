#!/usr/bin/env bash
# llama.cpp for the GGUF tests, idempotent: llama-cpp-python (pinned) in the repo's venv.
# It has no CPU wheel on PyPI, so it is built once from its source package (CPU only, about
# 25 minutes on two cores) and the wheel is kept in two caches: the repo's ignored
# .cache/wheels/ and ~/.cache/tuning-workbench/wheels/ (survives a fresh clone). Later runs
# install the cached wheel in seconds.
# The build targets any x86-64 with AVX2/FMA/F16C (GGML_NATIVE=OFF: not this machine's CPU).
# Usage: .ci/llama-cpp-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
PY=.venv/bin/python
CACHES=(".cache/wheels" "${HOME}/.cache/tuning-workbench/wheels")
PATTERN="llama_cpp_python-${VERSION}-*.whl"

installed="$("$PY" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))" \
    2>/dev/null || true)"
if [ "$installed" = "$VERSION" ] && "$PY" -c "import llama_cpp" 2>/dev/null; then
    echo "llama-cpp-python ${VERSION} is already installed in .venv: nothing to do"
    exit 0
fi

wheel=""
for dir in "${CACHES[@]}"; do
    found="$(ls "$dir"/$PATTERN 2>/dev/null | head -n 1 || true)"
    if [ -n "$found" ]; then wheel="$found"; echo "using the cached wheel $wheel"; break; fi
done

if [ -z "$wheel" ]; then
    echo "no cached llama-cpp-python ${VERSION} wheel: building it from source (CPU only)"
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        nice -n 19 .venv/bin/pip wheel --no-deps --no-binary llama-cpp-python \
        -w "$build" "llama-cpp-python==${VERSION}"
    built="$(ls "$build"/$PATTERN | head -n 1)"
    for dir in "${CACHES[@]}"; do
        mkdir -p "$dir" && cp "$built" "$dir/"
        echo "cached $(basename "$built") in $dir"
    done
    wheel="${CACHES[0]}/$(basename "$built")"
fi

# Also installs its small runtime dependencies (diskcache; numpy and jinja2 are there).
.venv/bin/pip install "$wheel"
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed in .venv')"
