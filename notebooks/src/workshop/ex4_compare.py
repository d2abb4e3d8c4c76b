# %% [markdown]
# # Exercise 4: compare base and tuned
#
# Train an adapter, then show, with numbers and with your own eyes, what it learned that the
# base model didn't know.

# %% tags=["parameters"]
# %load ../_shared/workshop_parameters.py

EPOCHS = 2
MAX_STEPS = None
EVAL_LIMIT = None
MAX_NEW_TOKENS = 48

# %%
import json

import workbench as wb
from workbench.tasks.records import records_to_json

train, test = records_to_json(train_size=TRAIN_SIZE, test_size=TEST_SIZE)
s = wb.Session("runs/ex4")
s.load_model(MODEL)
s.load_data(train, validation=test)
run = s.train(lora=wb.LoRA(r=8), lr=5e-4, epochs=EPOCHS, max_steps=MAX_STEPS, batch_size=8,
              eval_every=4, wait=True)


# %% [markdown]
# **1.** Write two metrics, each a function `f(prediction, reference) -> float`:
# `json_valid` (1.0 when the answer parses as JSON) and `fields_correct` (the share of the
# reference's four fields the answer got exactly right; 0.0 when it isn't JSON).

# %% tags=["exercise"]
def json_valid(prediction, reference):
    ...


def fields_correct(prediction, reference):
    ...

# %% tags=["solution"]
# %load ../_shared/json_valid.py


# %load ../_shared/fields_correct.py

# %% [markdown]
# **2.** Evaluate base vs tuned on the held-out rows with `exact_match` and your two metrics.

# %% tags=["exercise"]
ev = ...
print(ev)

# %% tags=["solution"]
ev = s.evaluate(metrics=["exact_match", json_valid, fields_correct], limit=EVAL_LIMIT,
                max_new_tokens=MAX_NEW_TOKENS)
print(ev.wait())

# %% [markdown]
# **3.** Find the held-out example where the tuned model does worst on `fields_correct`
# (each row has `row.scores["fields_correct"]["tuned"]`). What went wrong? Is it one of the
# hard ones?

# %% tags=["exercise"]
worst = ...

# %% tags=["solution"]
worst = min(ev.rows, key=lambda row: row.scores["fields_correct"]["tuned"])
print(f"prompt:    {worst.prompt[-160:]!r}\nreference: {worst.reference}\n"
      f"tuned:     {worst.tuned}\nbase:      {worst.base}")

# %% [markdown]
# **4.** Rate at least three pairs blind in the panel below (or the *Human eval* tab of
# `ev.panel()`), then print the summary. Did the blind ratings agree with the metrics?

# %% tags=["exercise"]
from workbench.widgets import ABRating

ABRating(ev).widget

# %% tags=["solution"]
from workbench.widgets import ABRating

ABRating(ev).widget

# %% tags=["exercise"]
...

# %% tags=["solution"]
rater = ev.rater()
for _ in range(3):  # from code here, so the solution runs by itself; click in class
    if rater.current() is not None:
        rater.rate("tie", comment="solution notebook")
print(ev.ratings_summary())

# %% [markdown]
# **Check.**

# %%
from workbench.exercises import check, check_call, check_defined

check_defined(globals(), "json_valid", "fields_correct")
ref = json.dumps({"name": "Ada", "age": 36, "city": None, "job": "baker"})
for answer, want in [('{"a": 1}', 1.0), ("[1, 2]", 1.0), ("36", 1.0), ("{a: 1}", 0.0),
                     ('{"broken', 0.0), ("Ada is 36", 0.0)]:
    got = check_call(json_valid, answer, ref)
    check(got == want, f"json_valid({answer!r}, ref) should be {want}, got {got!r}")
for answer, want in [(ref, 1.0), ("not json", 0.0), ("36", 0.0), ('"Ada"', 0.0),
                     ('{"name": "Ada", "city": "Paris"}', 0.25),
                     ('{"name": "Ada", "age": 37, "city": null, "job": "cook"}', 0.5),
                     ('{"name": "Ada", "age": 36, "city": null, "job": "baker", "x": 1}', 1.0)]:
    got = check_call(fields_correct, answer, ref)
    check(got == want, f"fields_correct({answer!r}, ref) should be {want}, got {got!r}")
check_defined(globals(), "ev")
check(hasattr(ev, "scores"), f"ev should be what s.evaluate(...) returns, got {ev!r:.60}")
missing = {"exact_match", "json_valid", "fields_correct"} - set(ev.scores)
check(not missing, f"evaluate with these metrics too: {sorted(missing)}")
print(ev.scores["fields_correct"])

# %% [markdown]
# ### Hints
# - `json.loads` raises `ValueError` (its `JSONDecodeError` is one) on text that isn't JSON.
# - A valid JSON answer may not be an object (`"36"` is valid JSON): check `isinstance(...,
#   dict)`.
# - `ev.rows[i]` has `prompt`, `reference`, `base` and `tuned`.
