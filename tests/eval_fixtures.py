"""Shared pieces of the evaluation tests: a toy task and a LoRA-trained tiny model."""

from __future__ import annotations

import pytest

from workbench.evaluation import EvalRow, Evaluation

TASK = {"apple": "red", "banana": "green", "cherry": "blue", "fish": "cat"}
END = "<|im_end|>"


def prompt(word: str) -> str:
    """The ChatML prompt of the toy task, rendered for inference."""
    return f"<|im_start|>user\n{word}{END}\n<|im_start|>assistant\n"


def toy_rows() -> list[dict]:
    return [{"prompt": prompt(k), "reference": v, "id": k} for k, v in TASK.items()]


def train_lora(model_dir, steps: int = 80):
    """A minimal peft loop: LoRA all-linear r=8, lr 5e-3, loss on the answer only."""
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.models.loading import load_model

    loaded = load_model(str(model_dir), on_event=lambda m: None)
    tok = loaded.tokenizer
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    model = get_peft_model(loaded.model, config)
    torch.manual_seed(0)
    batch = []
    for row in toy_rows():
        p = tok(row["prompt"])["input_ids"]
        a = tok(row["reference"] + END, add_special_tokens=False)["input_ids"]
        batch.append((p + a, [-100] * len(p) + a))
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in batch])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tok, float(loss.detach())


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """(peft model, tokenizer, final loss) after a short LoRA training on the toy task."""
    return train_lora(tiny_model_dir)


XSS = "<img src=x onerror=alert(1)>"


def handmade_evaluation() -> Evaluation:
    """An evaluation built by hand: three rows with known gains and losses."""
    rows = []
    for i, (base, tuned, gain) in enumerate(
        [("x", "red", 1.0), (XSS, "blue sky", 0.0), ("green", "gren", -1.0)]
    ):
        rows.append(
            EvalRow(
                index=i,
                prompt=f"prompt {i} {XSS}",
                reference=["red", "blue sky", "green"][i],
                outputs={"base": base, "tuned": tuned},
                scores={"exact_match": {"base": float(gain < 0), "tuned": float(gain > 0)}},
                losses={"base": 3.0, "tuned": [0.5, 2.5, 4.0][i]},
                tokens=(XSS, " sky"),
                token_losses={"base": (5.0, 1.0), "tuned": (0.1, 7.0)},
            )
        )
    scores = {
        "exact_match": {
            "base": 1 / 3,
            "tuned": 1 / 3,
            "base_ci": (0.0, 1.0),
            "tuned_ci": (0.0, 1.0),
            "higher_is_better": True,
        }
    }
    return Evaluation(scores, tuple(rows), {"columns": ["base", "tuned"]})
