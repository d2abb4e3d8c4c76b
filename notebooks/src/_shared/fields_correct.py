def fields_correct(prediction, reference):
    """A custom metric: the share of the reference's fields the answer got exactly right."""
    try:
        got = json.loads(prediction)
    except ValueError:
        return 0.0
    want = json.loads(reference)
    if not isinstance(got, dict):
        return 0.0
    return sum(got.get(key) == value for key, value in want.items()) / len(want)
