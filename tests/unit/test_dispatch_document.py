"""A big run's document (report.json, --json) is written fast and stays readable."""

from __future__ import annotations

import json

from meshrun.rundir import LONG_LIST, document_json


def _task(n: int) -> dict[str, object]:
    return {"name": f"t{n}", "status": "succeeded", "timeline": [{"host": "h1", "ü": n}]}


def test_a_small_document_is_indented_as_ever() -> None:
    doc = {"schema": 1, "tasks": [_task(n) for n in range(3)], "hosts": [{"name": "h1"}]}
    assert document_json(doc) == json.dumps(doc, indent=2, ensure_ascii=False)


def test_a_long_list_has_one_entry_a_line_and_the_rest_is_indented() -> None:
    tasks = [_task(n) for n in range(LONG_LIST + 1)]
    doc = {"schema": 1, "command": ["meshrun", "dispatch"], "tasks": tasks, "hosts": []}
    text = document_json(doc)
    assert json.loads(text) == doc
    lines = text.splitlines()
    assert lines[:5] == [
        "{",
        '  "schema": 1,',
        '  "command": [',
        '    "meshrun",',
        '    "dispatch"',
    ]
    start = lines.index('  "tasks": [')
    assert lines[start + 1] == "    " + json.dumps(tasks[0], ensure_ascii=False) + ","
    assert lines[start + len(tasks)] == "    " + json.dumps(tasks[-1], ensure_ascii=False)
    assert lines[start + len(tasks) + 1 :] == ["  ],", '  "hosts": []', "}"]
