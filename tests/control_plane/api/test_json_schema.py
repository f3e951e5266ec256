from __future__ import annotations

import pytest

from control_plane.api.json_schema import first_problem

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "minLength": 1},
        "cpu": {"type": "number", "exclusiveMinimum": 0},
        "count": {"type": "integer", "minimum": 1, "maximum": 10},
        "command": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "policy": {"enum": ["Always", "Never"]},
        "time": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9:]+$"}]},
    },
}


def test_valid_options_pass() -> None:
    options = {
        "image": "python:3.11",
        "cpu": 0.5,
        "count": 3,
        "command": ["echo", "hi"],
        "env": {"A": "1"},
        "policy": "Never",
        "time": "01:00",
    }
    assert first_problem(SCHEMA, options) is None


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "missing 'image'"),
        ({"image": "x", "gpu": 1}, "unknown option 'gpu' (known: command, count, cpu"),
        ({"image": "x", "cpu": "2"}, "options.cpu must be number (got str)"),
        ({"image": "x", "cpu": 0}, "options.cpu must be > 0"),
        ({"image": "x", "count": True}, "options.count must be integer (got bool)"),
        ({"image": "x", "count": 11}, "options.count must be <= 10"),
        ({"image": "x", "command": []}, "at least 1 item"),
        ({"image": "x", "command": ["a", 2]}, "options.command[1] must be string"),
        ({"image": "x", "env": {"A": 1}}, "options.env.A must be string"),
        ({"image": "x", "policy": "Sometimes"}, "must be one of 'Always', 'Never'"),
        ({"image": "x", "time": "soon"}, "must be integer"),
        ({"image": ""}, "at least 1 character"),
    ],
)
def test_each_problem_is_named(options: dict, fragment: str) -> None:
    problem = first_problem(SCHEMA, options)
    assert problem is not None and fragment in problem
