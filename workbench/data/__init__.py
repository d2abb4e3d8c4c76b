"""Data preparation: read, detect the format, template, tokenize (completion-only labels), report.

Examples:
    >>> from workbench.data import PreparedData, TEMPLATES, render_prompt
    >>> sorted(TEMPLATES)
    ['alpaca', 'chatml', 'gemma']
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data"))
    >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
    >>> data = PreparedData.load(rows, tokenizer, max_length=512)
    >>> data.report().lines()[1]
    'rows: 100 read, 0 skipped; train 90, validation 10'
    >>> data.example(0).answer
    '166'
"""

from __future__ import annotations

from workbench.data.context import model_context
from workbench.data.example import Example, TokenView
from workbench.data.formats import FORMAT_NAMES, FORMATS, Format
from workbench.data.prepared import DataSpec, PreparedData, load_data
from workbench.data.problems import PROBLEM_KINDS, SMALL_DATASET_ROWS, Problem
from workbench.data.report import DataReport, LengthStats
from workbench.data.special_text import SPECIAL_TOKENS_IN_TEXT
from workbench.data.templates import (
    SAMPLE_CONVERSATION,
    TEMPLATES,
    Template,
    TemplateCheck,
    check_template,
    encode_prompt,
    render_prompt,
    resolve_template,
)
from workbench.data.tokenize import IGNORE_INDEX
from workbench.data.tool_calls import parse_tool_calls

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "IGNORE_INDEX",
    "PROBLEM_KINDS",
    "SAMPLE_CONVERSATION",
    "SMALL_DATASET_ROWS",
    "SPECIAL_TOKENS_IN_TEXT",
    "TEMPLATES",
    "DataReport",
    "DataSpec",
    "Example",
    "Format",
    "LengthStats",
    "PreparedData",
    "Problem",
    "Template",
    "TemplateCheck",
    "TokenView",
    "check_template",
    "encode_prompt",
    "load_data",
    "model_context",
    "parse_tool_calls",
    "render_prompt",
    "resolve_template",
]
