"""Small tasks of our own making, for the demo, the notebooks and workshops.

Examples:
    >>> from workbench.tasks import records_to_json
    >>> train, test = records_to_json(train_size=8, test_size=4)
    >>> sorted(train[0])
    ['input', 'instruction', 'output']
"""

from workbench.tasks.records import INSTRUCTION, json_valid, make_records, records_to_json

__all__ = ["INSTRUCTION", "json_valid", "make_records", "records_to_json"]
