"""Toy tokenized data sets for the training tests, built directly with the tokenizer.

A 4-way task: a prompt of random digits ends with a key word, and the answer is the colour
paired with that key. The tiny model (initializer_range=0.2) learns it through LoRA.
"""

from __future__ import annotations

import random

PAIRS = [("cat", "red"), ("dog", "green"), ("bird", "blue"), ("fish", "apple")]


def toy_rows(tokenizer, n: int, seed: int = 0, prompt_only_rows: int = 0) -> dict:
    """``n`` tokenized examples (columns input_ids, labels, attention_mask).

    The last ``prompt_only_rows`` rows have every label masked (no trained token).
    """
    rng = random.Random(seed)
    rows = {"input_ids": [], "labels": [], "attention_mask": []}
    for i in range(n):
        key, value = PAIRS[rng.randrange(len(PAIRS))]
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 6)))
        prompt = tokenizer(f"{digits} {key} =>").input_ids
        answer = [*tokenizer(f" {value}").input_ids, tokenizer.eos_token_id]
        labels = [-100] * len(prompt) + answer
        if i >= n - prompt_only_rows:
            labels = [-100] * len(labels)
        rows["input_ids"].append(prompt + answer)
        rows["labels"].append(labels)
        rows["attention_mask"].append([1] * len(labels))
    return rows


def toy_dataset(tokenizer, n: int, seed: int = 0, prompt_only_rows: int = 0):
    """The same as a ``datasets.Dataset``."""
    from datasets import Dataset

    return Dataset.from_dict(toy_rows(tokenizer, n, seed, prompt_only_rows))
