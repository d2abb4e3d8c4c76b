def is_json(text):
    """True when ``text`` parses as JSON."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def json_valid(prediction, reference):
    """A custom metric: 1.0 when the answer is valid JSON, whatever its content."""
    return float(is_json(prediction))
