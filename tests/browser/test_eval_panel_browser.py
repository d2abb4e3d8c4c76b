"""The EvalPanel in a real JupyterLab and chromium: scores plot, example list, escaped answers.

A notebook trains the tiny model for five steps, then evaluates eight validation rows; one
reference answer is an ``<img onerror>`` payload. Saves ``eval_panel.png`` (Scores tab) and
``eval_panel_examples.png`` (the hostile row opened) under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import pytest
from browser_helpers import (
    panel_output,
    run_notebook_in_lab,
    screenshot,
    shutdown_kernels,
    titles,
    write_notebook,
)

pytestmark = pytest.mark.browser

IMG_ANSWER = "<img src=x onerror=\"document.title='XSS'\">"
HOSTILE_QUESTION = "What does the hostile row say?"
CELLS = [
    'import workbench as wb\ns = wb.Session("run", verbose=False)\n'
    's.load_model(str(wb.build_tiny_model("tiny")))',
    "qa = lambda i: {'question': f'What is {i} plus {i}?', 'answer': f'{i} plus {i} is {2 * i}.'}\n"
    "val = [qa(i) for i in range(40, 47)]\n"
    f"val.append({{'question': {HOSTILE_QUESTION!r}, 'answer': {IMG_ANSWER!r}}})\n"
    "s.load_data([qa(i) for i in range(40)], validation=val);",
    "run = s.train(max_steps=5, batch_size=4, lr=1e-3, wait=True)",
    'ev = s.evaluate(metrics=["exact_match", "rouge"], max_new_tokens=8, limit=8); ev',
]
TRACES = "gd => (gd.data || []).map(t => t.name)"
Y_AXES = "gd => Object.keys(gd._fullLayout).filter(k => /^yaxis[0-9]*$/.test(k)).sort()"
SUBPLOT_TITLES = "gd => (gd.layout.annotations || []).map(a => a.text)"


def test_eval_panel_renders_and_escapes(lab, page):
    from playwright.sync_api import expect

    notebook = write_notebook(lab, "eval_panel", CELLS)
    try:
        run_notebook_in_lab(page, notebook)
        panel = panel_output(page, ".wb-eval-panel")

        # Scores tab: the table and the base-vs-tuned bar chart.
        expect(panel.locator("table.wb-table").first).to_contain_text("exact_match")
        expect(panel.locator("table.wb-table").first).to_contain_text("rouge1")
        plot = panel.locator(".js-plotly-plot").first
        expect(plot).to_be_visible()
        expect(plot.locator(".plot-container")).to_be_visible()
        # One chart per score, each on its own y axis (scores of different scales never share
        # one): a base and a tuned bar per score, titled with which way is better.
        axes = plot.evaluate(Y_AXES)
        assert len(axes) >= 5, axes  # exact_match, rouge1, rouge2, rougeL, rougeLsum
        assert plot.evaluate(TRACES) == ["base", "tuned"] * len(axes)
        assert "exact_match ↑ higher is better" in plot.evaluate(SUBPLOT_TITLES)
        box = plot.bounding_box()
        assert box and box["width"] > 200 and box["height"] > 150, box
        screenshot(page, "eval_panel", panel)

        # Tokens tab: the first example's reference is shaded before any control is touched.
        panel.get_by_role("tab", name="Tokens").click()
        expect(panel.locator("span[title^='loss ']").first).to_be_visible()

        # Examples tab: one entry per evaluated row; the hostile one opens as plain text.
        panel.get_by_role("tab", name="Examples").click()
        listbox = panel.locator(".widget-select select")  # not the sort-by dropdown
        options = listbox.locator("option")
        expect(options).to_have_count(8)
        labels = [t.replace("\xa0", " ") for t in options.all_text_contents()]  # nbsp spaces
        hostile = next(i for i, label in enumerate(labels) if HOSTILE_QUESTION in label)
        listbox.select_option(index=hostile)
        detail = panel.locator(".widget-html").filter(has_text="reference").first
        expect(detail).to_contain_text(HOSTILE_QUESTION)
        expect(detail).to_contain_text(IMG_ANSWER)
        page.wait_for_timeout(500)  # give a smuggled onerror handler time to fire
        screenshot(page, "eval_panel_examples", panel)

        assert page.locator('img[src="x"]').count() == 0
        assert "XSS" not in titles(page), titles(page)
        assert not [e for e in page.console_errors if "XSS" in e], page.console_errors
        assert page.blocked_requests == [], page.blocked_requests
    finally:
        shutdown_kernels(lab, notebook)
