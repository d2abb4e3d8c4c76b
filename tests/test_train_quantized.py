"""Training a 4-bit (QLoRA) base on CPU: inference on the model must not change its training."""

from __future__ import annotations

import workbench as wb

ROWS = [
    {"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}."} for i in range(40)
]
SETTINGS = {"batch_size": 4, "lr": 1e-3, "lora": wb.LoRA(r=8, dropout=0.0)}


def test_evaluating_a_4bit_model_does_not_change_its_training(tiny_model_dir, tmp_path):
    # bitsandbytes repacks 4-bit weights for its CPU inference kernel on an eval-mode forward
    # (an evaluation, a probe, a generate() before training), and training through that
    # layout lost the gradients to earlier layers; the launched runs' comparison found it.
    def losses(folder, eval_every, generate_first):
        s = wb.Session(folder, verbose=False)
        s.load_model(str(tiny_model_dir), quantization="4bit")
        s.load_data(ROWS)
        if generate_first:
            s.generate("What is 1 plus 1?", max_new_tokens=3)
        run = s.train(max_steps=6, eval_every=eval_every, wait=True, **SETTINGS)
        return [(r.loss, r.grad_norm) for r in run.history if r.kind == "train"]

    plain = losses(tmp_path / "a", 100, False)
    for case in ((1, False), (100, True)):
        other = losses(tmp_path / f"b{case}", *case)
        for (a, ga), (b, gb) in zip(plain, other, strict=True):
            assert abs(a - b) < 1e-5 and abs(ga - gb) < 1e-4, (case, plain, other)
