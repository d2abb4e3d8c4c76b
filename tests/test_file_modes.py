"""What the workbench writes is as readable as what a plain open() and mkdir() make.

Files written through temporaries (mkstemp, mkdtemp, safetensors' own writer) are created
private (0600, 0700): another user, a server in a container or a second machine of a run on
a shared disk could read an export's config.json but not its weights.
"""

from __future__ import annotations

import os
import stat

import workbench as wb


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_exports_checkpoints_and_records_get_the_umasks_modes(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=None)
    run = s.train(max_steps=2, save_every=1, wait=True)
    s.export("export/merged")
    s.export("export/adapter", format="adapter")
    s.report()
    mask = _umask()
    written = [
        s.run_dir / "session.json",
        s.run_dir / "report.html",
        run.run_dir / "run.json",
        run.run_dir / "status.json",
        *(s.run_dir / "export").rglob("*"),
        *(run.run_dir / "checkpoints").rglob("*"),
    ]
    weights = [p.name for p in written if p.suffix == ".safetensors"]
    assert {"model.safetensors", "adapter_model.safetensors", "trainable.safetensors"} <= set(
        weights
    )
    wrong = {
        str(p.relative_to(s.run_dir)): oct(_mode(p))
        for p in written
        if _mode(p) != (0o777 if p.is_dir() else 0o666) & ~mask
    }
    assert wrong == {}  # model.safetensors, session.json, run.json... were 0o600
    s.close()
