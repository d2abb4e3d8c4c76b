"""Records to JSON: turn a short free-text description of a person into a JSON object.

A base model rarely answers with exactly the expected JSON, and a few minutes of LoRA on CPU
teaches it the format, so base and tuned differ clearly. Phrasings vary, and some held-out
records are harder (ages in words, multi-word jobs, a missing city that must become null),
so the evaluation has something to show.

Examples:
    >>> row = make_records(1, seed=3)[0]
    >>> import json; sorted(json.loads(row["output"]))
    ['age', 'city', 'job', 'name']
"""

from __future__ import annotations

import json
import random

__all__ = ["INSTRUCTION", "json_valid", "make_records", "records_to_json"]

INSTRUCTION = (
    "Extract the person's name, age, city and job from the text as JSON with the keys "
    "name, age, city, job. Use null for anything the text does not say."
)

FIRST = [
    "Ada",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Liam",
    "Maya",
    "Nils",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
]
LAST = [
    "Lovelace",
    "Okafor",
    "Martin",
    "Patel",
    "Rossi",
    "Haddad",
    "Hopper",
    "Tanaka",
    "Silva",
    "Berg",
    "Adeyemi",
    "Murphy",
    "Cohen",
    "Larsen",
    "Ivanova",
    "Garcia",
]
CITIES = [
    "London",
    "Lagos",
    "Paris",
    "Mumbai",
    "Rome",
    "Beirut",
    "Boston",
    "Osaka",
    "Lisbon",
    "Oslo",
    "Nairobi",
    "Dublin",
    "Haifa",
    "Bergen",
    "Kyiv",
    "Seville",
]
JOBS = [
    "teacher",
    "nurse",
    "engineer",
    "baker",
    "pilot",
    "chemist",
    "carpenter",
    "lawyer",
    "designer",
    "farmer",
    "librarian",
    "plumber",
]
HARD_JOBS = ["data scientist", "bus driver", "marine biologist", "sound engineer"]
WORDS = {
    21: "twenty-one",
    34: "thirty-four",
    45: "forty-five",
    52: "fifty-two",
    28: "twenty-eight",
    60: "sixty",
    39: "thirty-nine",
}

PHRASES = [
    "{name}, {age}, lives in {city} and works as a {job}.",
    "Meet {name} from {city}: a {age}-year-old {job}.",
    "{Job} {name} ({age}) is based in {city}.",
    "Name: {name}; Age: {age}; City: {city}; Occupation: {job}",
    "{city} resident {name} is {age} years old and a {job} by trade.",
    "At {age}, {name} is a {job} living in {city}.",
]
NO_CITY = [
    "{name} is a {age}-year-old {job}.",
    "{Job} {name}, aged {age}, did not say where they live.",
]


def _record(rng: random.Random, hard: bool) -> dict:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age = rng.choice(sorted(WORDS)) if hard else rng.randint(19, 70)
    job = rng.choice(HARD_JOBS if hard and rng.random() < 0.5 else JOBS)
    city = None if hard and rng.random() < 0.35 else rng.choice(CITIES)
    phrase = rng.choice(NO_CITY if city is None else PHRASES)
    spoken_age = WORDS[age] if hard and age in WORDS and rng.random() < 0.7 else str(age)
    text = phrase.format(name=name, age=spoken_age, city=city, job=job, Job=job.capitalize())
    answer = {"name": name, "age": age, "city": city, "job": job}
    return {"instruction": INSTRUCTION, "input": text, "output": json.dumps(answer)}


def make_records(n: int, seed: int = 0, hard_share: float = 0.0) -> list[dict]:
    """``n`` alpaca-format rows (instruction, input, output), reproducible from ``seed``.

    Args:
        n: Number of rows.
        seed: Random seed.
        hard_share: Share of harder rows (ages in words, multi-word jobs, missing city).

    Examples:
        >>> make_records(2, seed=1) == make_records(2, seed=1)
        True
    """
    rng = random.Random(seed)
    return [_record(rng, rng.random() < hard_share) for _ in range(n)]


def records_to_json(
    train_size: int = 64, test_size: int = 16, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """The demo task: ``train_size`` easy-to-medium rows and ``test_size`` held-out rows of
    which about a third are hard. No input text appears in both.

    Examples:
        >>> train, test = records_to_json()
        >>> len(train), len(test)
        (64, 16)
    """
    train = make_records(train_size, seed=seed, hard_share=0.15)
    seen = {row["input"] for row in train}
    candidates = make_records(test_size * 4, seed=seed + 1, hard_share=0.35)
    test = [row for row in candidates if row["input"] not in seen][:test_size]
    return train, test


def json_valid(prediction: str, reference: str) -> bool:
    """Whether ``prediction`` parses as a JSON object (a custom metric, pass/fail per row, so
    its score gets a Wilson interval, as exact match does).

    JSON as RFC 8259 and ``JSON.parse`` read it: Python's ``NaN`` and ``Infinity``, which
    ``json.loads`` accepts, are not JSON.

    Examples:
        >>> json_valid('{"name": "Ada"}', ""), json_valid("Ada is 36", "")
        (True, False)
        >>> json_valid('{"age": NaN}', ""), json_valid('{"age": -Infinity}', "")
        (False, False)
    """
    try:
        return isinstance(json.loads(prediction.strip(), parse_constant=_not_json), dict)
    except ValueError:
        return False


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")
