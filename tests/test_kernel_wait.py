"""``run.wait()`` in a real ipykernel: the monitor renders and its buttons act while it blocks.

A kernel of this interpreter (started with jupyter_client, no browser) trains the tiny model
with ``wait=False``, builds the run's monitor, then runs a cell that blocks in ``run.wait()``
while a second cell is already queued behind it. Over the shell channel the test sends the
``comm_msg`` a click on a button sends in JupyterLab (Pause, Evaluate now, Stop), and reads
what the kernel publishes (the monitor's widget updates on IOPub) and writes (the run folder).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # seconds: bounds for a kernel start (torch import) and a step on busy cores


class Kernel:
    """A kernel of this interpreter with the repository importable, and a blocking client."""

    def __init__(self, tmp_path: Path) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        spec = tmp_path / "kernels" / "wb-wait"
        spec.mkdir(parents=True)
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "wb", "language": "python"})
        )
        specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
        self.km = KernelManager(kernel_name="wb-wait", kernel_spec_manager=specs)
        env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
        self.km.start_kernel(cwd=str(tmp_path), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)
        self.iopub: list[dict] = []

    def send(self, code: str) -> str:
        """Queue ``code`` for execution; its msg_id."""
        return self.kc.execute(code)

    def run(self, code: str) -> str:
        """Execute ``code`` and wait for it; its stdout (fails on an error)."""
        msg_id = self.send(code)
        reply = self.reply(msg_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        return self.output(msg_id)

    def output(self, msg_id: str) -> str:
        """The stdout of request ``msg_id``, once it is idle (IOPub lags the reply)."""
        self.until(lambda: not self.busy(msg_id), "the idle status")
        return self.stdout(msg_id)

    def reply(self, msg_id: str, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            self.read_iopub(0)
            try:
                msg = self.kc.get_shell_msg(timeout=0.1)
            except queue.Empty:
                assert time.monotonic() < deadline, f"no reply to {msg_id}"
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def read_iopub(self, timeout: float) -> None:
        """Move what IOPub has into ``self.iopub`` (waiting up to ``timeout`` for the first)."""
        while True:
            try:
                self.iopub.append(self.kc.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return
            timeout = 0

    def stdout(self, msg_id: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.iopub
            if m["msg_type"] == "stream"
            and m["content"]["name"] == "stdout"
            and m["parent_header"].get("msg_id") == msg_id
        )

    def updates(self, model_id: str, key: str) -> list:
        """The values of widget ``model_id``'s ``key`` the kernel sent so far, in order."""
        return [
            m["content"]["data"]["state"][key]
            for m in self.iopub
            if m["msg_type"] == "comm_msg"
            and m["content"]["comm_id"] == model_id
            and m["content"]["data"].get("method") == "update"
            and key in m["content"]["data"].get("state", {})
        ]

    def click(self, model_id: str) -> None:
        """Send what JupyterLab sends when a Button is clicked."""
        content = {
            "comm_id": model_id,
            "data": {"method": "custom", "content": {"event": "click"}},
        }
        self.kc.shell_channel.send(self.kc.session.msg("comm_msg", content))

    def until(self, predicate, what: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            self.read_iopub(0.05)
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"

    def busy(self, msg_id: str) -> bool:
        """Whether the request ``msg_id`` has not sent its idle status yet."""
        return not any(
            m["msg_type"] == "status"
            and m["parent_header"].get("msg_id") == msg_id
            and m["content"]["execution_state"] == "idle"
            for m in self.iopub
        )

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path):
    k = Kernel(tmp_path)
    yield k
    k.close()


SETUP = """
import json
import workbench as wb
s = wb.Session("session", verbose=False)
s.load_model({model!r})
rows = [{{"question": f"What is {{i}} plus {{i}}?", "answer": f"{{2 * i}}"}} for i in range(40)]
s.load_data(rows, validation=rows[:4])
run = s.train(max_steps=5000, batch_size=4, lr=1e-3, eval_every=5000, wait=False)
m = run.monitor()
print(json.dumps({{name: getattr(m, name).model_id for name in
                  ("pause_button", "eval_button", "stop_button", "status_html")}}))
"""


def _status(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return ""


def _evals(run_dir: Path) -> int:
    try:
        lines = (run_dir / "history.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(json.loads(line).get("kind") == "eval" for line in lines if line.strip())


def test_buttons_act_and_the_monitor_renders_while_run_wait_blocks(
    kernel, tiny_model_dir, tmp_path
):
    ids = json.loads(kernel.run(SETUP.format(model=str(tiny_model_dir))).splitlines()[-1])
    run_dir = tmp_path / "session" / "runs" / "run-001"
    blocking = kernel.send('status = run.wait()\nprint("A", status.state.value)')
    queued = kernel.send('print("B", run.state.value)')

    # The status line is re-sent while the cell blocks: steps keep coming in.
    def steps():
        lines = kernel.updates(ids["status_html"], "value")
        return sorted({int(v.split("step ")[1].split("/")[0]) for v in lines if "running" in v})

    assert kernel.until(lambda: len(steps()) >= 3, "three status renders")
    assert kernel.busy(blocking)

    kernel.click(ids["pause_button"])
    assert kernel.until(lambda: _status(run_dir) == "paused", "paused on disk")
    assert kernel.until(
        lambda: any("paused · step" in v for v in kernel.updates(ids["status_html"], "value")),
        "the monitor saying paused",
    )
    evals = _evals(run_dir)
    kernel.click(ids["eval_button"])
    assert kernel.until(lambda: _evals(run_dir) == evals + 1, "an evaluation while paused")
    assert kernel.busy(blocking) and _status(run_dir) == "paused"

    kernel.click(ids["stop_button"])
    first = kernel.reply(blocking)
    second = kernel.reply(queued)
    assert first["content"]["status"] == second["content"]["status"] == "ok"
    # The cell queued behind the blocking one ran after it, in order, once.
    assert second["content"]["execution_count"] == first["content"]["execution_count"] + 1
    assert kernel.output(blocking) == "A stopped\n"
    assert kernel.output(queued) == "B stopped\n"
    assert _status(run_dir) == "stopped"

    # The kernel answers as usual afterwards (its shell queue was handed back intact).
    assert kernel.run("print(run.state.value, 6 * 7)") == "stopped 42\n"
