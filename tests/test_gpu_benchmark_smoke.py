"""benchmarks/gpu_throughput.py works end to end: its --smoke run on CPU prints every row.

The GPU figures themselves come from running the script on a GPU machine (issue 12, through
benchmarks/gpu_device_run.sh); this checks that the prepared script runs every variant,
the 4-bit ones included (bitsandbytes 0.50 trains on CPU too), compares each row with its own
baseline, prints the measured-vs-estimated memory table and writes the raw figures, so it is
ready there.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Every variant the script knows must show up as a row (its own list, read from the file).
_SCRIPT = (REPO / "benchmarks" / "gpu_throughput.py").read_text()
VARIANTS = tuple(
    re.findall(r'"([a-z-]+)"', re.search(r"^VARIANTS = \(([^)]*)\)", _SCRIPT, re.M).group(1))
)
PARTS = ("weights", "adapter", "gradients", "optimizer", "activations", "overhead")


def _rows(text: str, cells: int) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        found = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(found) == cells and found[0] == "tiny":
            rows[found[1]] = found
    return rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-smoke")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_throughput.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    main, _, memory = done.stdout.partition("### Measured vs estimated peak")
    return done.stdout, main, memory, out


def test_smoke_run_prints_a_row_for_every_variant(smoke):
    stdout, main, _, _ = smoke
    rows = _rows(main, 9)
    assert sorted(rows) == sorted(VARIANTS), stdout
    try:
        import trl  # noqa: F401
    except ImportError:
        for variant in ("trl", "trl-nogc"):
            assert rows[variant][2] == "skipped: trl is not installed", rows[variant]
        measured = [v for v in VARIANTS if not v.startswith("trl")]
    else:
        measured = list(VARIANTS)
    if rows["workbench-compile"][2].startswith("skipped: failed:"):
        measured.remove("workbench-compile")  # a TrainSpec without compile= says why
    # Liger-Kernel's fused loss is Triton: on CPU its row says so, before any process starts.
    assert rows["workbench-liger"][2] == "skipped: liger-kernel needs CUDA (Triton)"
    measured.remove("workbench-liger")
    for variant in measured:
        tokens_per_s, speed, _, _, flops, train_loss, held_out = rows[variant][2:]
        assert float(tokens_per_s.replace(",", "")) > 0, rows[variant]
        assert re.fullmatch(r"\d+\.\d\dx", speed), rows[variant]
        assert re.fullmatch(r"\d+\.\d\d \(\d+\.\d%\)", flops), rows[variant]
        # Random weights over a 1024-token vocabulary: the loss starts near log(1024) = 6.93.
        for loss in (float(train_loss), float(held_out)):
            assert math.isfinite(loss) and 5.0 < loss < 8.0, rows[variant]
    # Each row against its own baseline: the 4-bit rows against Trainer + peft in 4 bits.
    assert rows["trainer"][3] == rows["trainer-qlora"][3] == "1.00x"
    assert "QLoRA rows against trainer-qlora" in main
    assert "matmul peak measured here:" in stdout
    assert "workbench: packing=False" in stdout


def test_smoke_run_prints_measured_against_estimated_memory(smoke):
    _, main, memory, _ = smoke
    assert memory, "no measured-vs-estimated table"
    measured = [v for v, row in _rows(main, 9).items() if not row[2].startswith("skipped")]
    rows = _rows(memory, 8)
    assert sorted(rows) == sorted(measured)
    for row in rows.values():
        size, measured_peak, allocated, estimate, ratio, within = row[2:]
        assert re.fullmatch(r"4 x \d+( \(gc\))?", size), row  # batch x widest micro-batch
        assert (measured_peak, allocated, ratio, within) == ("n/a", "n/a", "-", "-"), row
        assert float(estimate) > 0, row
    # peft's prepare_model_for_kbit_training turns gradient checkpointing on by default; the
    # workbench's "auto" does for a 4-bit base on CUDA only, and the row says what it did.
    assert rows["trainer-qlora"][2].endswith("(gc)")
    assert not rows["workbench-qlora"][2].endswith("(gc)")


def test_smoke_run_writes_the_figures_a_calibration_needs(smoke):
    stdout, _, _, out = smoke
    report = json.loads((out / "results.json").read_text())
    assert sorted(r["variant"] for r in report["results"]) == sorted(VARIANTS)
    by_variant = {c["variant"]: c for c in report["calibration"]}
    assert by_variant["workbench-qlora"]["settings"]["quantization"] == "4bit"
    assert by_variant["workbench"]["settings"]["quantization"] is None
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["workbench-qlora"]["checkpointed"] is False  # on CPU; on CUDA "auto" turns it on
    assert by_variant["workbench-qlora"]["settings"]["gradient_checkpointing"] is False
    for entry in report["calibration"]:
        parts = entry["parts"]
        assert parts["total"] == sum(parts[name] for name in PARTS), entry
        assert 0 < entry["saved_activations"] < parts["activations"], entry
        assert entry["constants"]["allocator_factor"] > 1, entry
    tables = (out / "tables.md").read_text()
    assert tables.splitlines()[0] in stdout and "### Measured vs estimated peak" in tables
    assert "===== tiny workbench-qlora: exit 0" in (out / "workers.log").read_text()


def _gpu_row(variant, tokens_per_s=20_000, peak_gib=10.0, device_peak_gib=12.0) -> dict:
    """A result row shaped as a GPU worker writes it (made-up figures; no GPU here): 0.5b,
    batch 8, widest micro-batch 434 tokens."""
    gib = 2**30
    memory = {
        "peak_allocated": int(peak_gib * gib),
        "peak_reserved": int((device_peak_gib - 0.5) * gib),
        "context_end": gib // 2,
        "device_peak": int(device_peak_gib * gib),
    }
    return dict(
        variant=variant, shape="0.5b", batch=8, widest=434, packed=False,
        tokens_per_s=tokens_per_s, useful_flops=1e14, peak_gib=peak_gib,
        train_loss=6.5, held_out_loss=6.6, memory=memory, max_batch_tokens=2000,
    )  # fmt: skip


def _bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_throughput

    return gpu_throughput


def test_gpu_rows_print_ratios_against_their_own_baseline_and_the_estimate():
    # The CUDA branch of the two tables.
    bench, row = _bench(), _gpu_row
    results = [
        row("trainer", 20_000, 12.0, 14.0),
        row("workbench", 50_000, 5.0, 6.0),
        row("trainer-qlora", 10_000, 8.0, 9.0),
        row("workbench-qlora", 30_000, 2.0, 3.0),
        row("workbench-liger", 40_000, 4.0, 5.0),
    ]
    rows = {r[1]: r for r in _rows_of(bench.table(results, 8e14, True))}
    assert rows["workbench"][3:6] == ["2.50x", "5.0", "0.42x"]  # against trainer
    assert rows["workbench-qlora"][3:6] == ["3.00x", "2.0", "0.25x"]  # trainer-qlora
    assert rows["workbench"][6] == "100.00 (12.5%)"
    assert rows["workbench-liger"][3:6] == ["2.00x", "4.0", "0.33x"]  # a LoRA row: trainer
    found = bench.calibration(results)
    settings = {entry["variant"]: entry["settings"] for entry in found}
    assert settings["workbench-liger"] == settings["workbench"]  # estimated as the workbench
    text = bench.calibration_table(found)
    lines = {c[1]: c for c in _rows_of(text)}
    for entry in found:
        measured = float(lines[entry["variant"]][3])
        estimate = float(lines[entry["variant"]][5])
        assert abs(measured / estimate - float(lines[entry["variant"]][6])) < 0.02
        assert lines[entry["variant"]][7] == ("yes" if entry["within"] else "no")
        assert entry["implied"]["overhead"] == 2**30 // 2
    assert "Implied per workbench row, median: overhead 0.50 GiB" in text
    factors = sorted(c["implied"]["allocator_factor"] for c in found
                     if c["variant"].startswith("workbench"))  # fmt: skip
    assert f"allocator factor {factors[1]:.2f} (now" in text  # the middle of three


def test_each_row_is_estimated_with_the_memory_levers_its_worker_ran_with():
    from workbench.models.memory import estimate_memory
    from workbench.train import core

    bench = _bench()
    switches = (core.LEAN_MLP_ON, core.LEAN_NORM_ON, core.REDRAWS_MASKS_ON)
    variants = ("trainer", "workbench", *bench._LEVERS_OFF)
    found = {c["variant"]: c for c in bench.calibration([_gpu_row(v) for v in variants])}
    activations = {variant: c["parts"]["activations"] for variant, c in found.items()}
    assert switches == (core.LEAN_MLP_ON, core.LEAN_NORM_ON, core.REDRAWS_MASKS_ON)
    for ablation in bench._LEVERS_OFF:  # each ablation keeps more than the workbench...
        assert activations["workbench"] < activations[ablation] < activations["trainer"]
    # ...and plain transformers + peft has none of the levers
    with pytest.MonkeyPatch.context() as patch:
        for name in bench._ALL_LEVERS:
            patch.setattr(core, name, set())
        config = bench.qwen_config("0.5b")
        config.dtype = "bfloat16"
        plain = estimate_memory(config, **found["trainer"]["settings"])
    assert found["trainer"]["parts"]["total"] == plain.total


def _rows_of(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| 0.5b")
    ]


def test_smoke_run_profiles_the_workbench_rows_after_their_timed_steps(smoke):
    _, _, _, out = smoke
    profiles = (out / "profiles.md").read_text()
    report = json.loads((out / "results.json").read_text())
    for r in report["results"]:
        if r["variant"] in ("workbench", "workbench-padded", "workbench-qlora"):
            assert r["profile"]["steps"] == 3 and r["profile"]["wall_ms"] > 0, r
            assert f"## tiny {r['variant']}\n" in profiles
            assert "Self CPU" in r["profile"]["table"]  # torch's own table of the ops
        elif r["variant"] in ("trainer", "trainer-qlora"):
            assert r.get("profile") is None  # Trainer rows run their steps as Trainer does
        if "phases" in r:  # where a row's time went, its process's start included
            assert list(r["phases"])[-5:] == [
                "imports_rows",
                "load",
                "train",
                "held_out",
                "profile",
            ]
            assert r["phases"]["train"] > 0 and all(v >= 0 for v in r["phases"].values()), r


def _wheel(folder: Path, name: str, init: str) -> Path:
    """A minimal wheel (a zip of the package and its dist-info), built on the spot."""
    import zipfile

    path = folder / f"{name}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", init)
        archive.writestr(f"{name}-0.0.1.dist-info/METADATA", f"Name: {name}\nVersion: 0.0.1\n")
    return path


def test_the_device_script_installs_carried_wheels_and_drops_one_that_does_not_import(tmp_path):
    # benchmarks/gpu_device_run.sh is the one command of a lent GPU machine: it extracts the
    # carried wheels into a site folder, drops a carried package that does not import there
    # (so the image's own is used) and runs the benchmark, leaving its files under $OUT.
    wheels, site, out = tmp_path / "wheels", tmp_path / "site", tmp_path / "out"
    wheels.mkdir()
    _wheel(wheels, "wbprobe", "VALUE = 42\n")
    _wheel(wheels, "dill", "raise ImportError('broken on purpose')\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WHEELS": str(wheels),
        "SITE": str(site),
        "OUT": str(out),
        "LIMIT": "300",
    }
    done = subprocess.run(
        [
            "bash",
            str(REPO / "benchmarks" / "gpu_device_run.sh"),
            "--smoke",
            "--variants",
            "trainer",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    log = (out / "device.log").read_text()
    assert "## installing 2 carried wheels" in log
    assert "carried dill does not import, using the image's own" in log
    assert (site / "wbprobe" / "__init__.py").read_text() == "VALUE = 42\n"
    assert not (site / "dill").exists() and not list(site.glob("dill-*.dist-info"))
    rows = _rows((out / "tables.md").read_text(), 9)
    assert float(rows["trainer"][2].replace(",", "")) > 0, rows
