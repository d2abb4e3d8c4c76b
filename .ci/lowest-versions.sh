#!/usr/bin/env bash
# The lower bounds pyproject.toml declares, kept true: a venv of every dependency at its lowest
# allowed version (.ci/lowest_requirements.py) runs the tests of each area of the workbench
# (the ones that need no browser, llama.cpp, GPU or the built-in Gemma: a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/lowest-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q $(python3 .ci/lowest_requirements.py) \
    pytest pytest-xdist nbformat nbclient ipykernel openai pillow polars
"$venv/bin/pip" install -q --no-deps -e .  # the project itself, with nothing upgraded
"$venv/bin/pip" list --format=freeze > .cache/lowest-versions.txt
"$venv/bin/python" -m pytest -p no:cacheprovider -n 2 --dist loadfile -q \
    -m "not slow and not browser and not llama_cpp and not gpu" \
    tests/test_session.py tests/test_train_run.py tests/test_train_quantized.py \
    tests/test_data_formats.py tests/test_data_templates.py tests/test_loading.py \
    tests/test_memory.py tests/test_chat.py tests/test_eval_run.py tests/test_eval_metrics.py \
    tests/test_eval_compare.py tests/test_training_monitor.py tests/test_deploy.py \
    tests/test_export_parity.py tests/test_serve_requests.py tests/test_cli.py \
    tests/test_train_moe.py
