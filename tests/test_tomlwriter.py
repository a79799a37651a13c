"""The one TOML writer (importer, wizard, demo): round trip, comments, what TOML cannot hold."""

from __future__ import annotations

import math
import tomllib

import pytest

from sanakit.tomlwriter import dumps, paths_of


def test_round_trip_with_tables_arrays_of_tables_and_odd_strings() -> None:
    data = {
        "title": 'a "quoted"\tline\nwith \\ and \x7f',
        "n": 3,
        "x": 2.5e-5,
        "on": False,
        "sizes": (512, 1024),
        "model": {"base": "/m", "extra": {"deep": [1.0, 2.0]}},
        "data": {"datasets": ({"id": "a", "repeats": 1}, {"id": "b", "flip": True})},
    }
    text = dumps(data)
    back = tomllib.loads(text)
    assert back["title"] == data["title"] and back["sizes"] == [512, 1024]
    assert back["model"] == {"base": "/m", "extra": {"deep": [1.0, 2.0]}}
    assert back["data"]["datasets"] == [{"id": "a", "repeats": 1}, {"id": "b", "flip": True}]
    assert "[[data.datasets]]" in text and "[model.extra]" in text


def test_none_is_left_out_and_non_finite_floats_are_toml_literals() -> None:
    text = dumps({"a": None, "b": 1, "t": {"c": None, "d": math.inf, "e": -math.inf}})
    back = tomllib.loads(text)
    assert back["b"] == 1 and "a" not in back and "c" not in back["t"]
    assert back["t"]["d"] == math.inf and back["t"]["e"] == -math.inf
    assert math.isnan(tomllib.loads(dumps({"f": math.nan}))["f"])
    assert paths_of({"a": None, "t": {"c": None, "d": 1}}) == {"t", "t.d"}
    with pytest.raises(TypeError, match="cannot write"):
        dumps({"x": object()})


def test_comments_go_before_their_key_table_or_array_item() -> None:
    data = {"train": {"lr": 1e-4}, "data": {"datasets": [{"id": "a"}, {"id": "b"}]}}
    comments = {"train.lr": ["from learning_rate"], "data.datasets[1]": ["second"]}
    lines = dumps(data, comments, ["header"]).splitlines()
    assert lines[0] == "# header"
    assert lines[lines.index("lr = 0.0001") - 1] == "# from learning_rate"
    second = [i for i, line in enumerate(lines) if line == "[[data.datasets]]"][1]
    assert lines[second - 1] == "# second"
    long = dumps({"k": 1}, {"k": ["word " * 40]}).splitlines()
    assert len(long) > 2 and all(len(line) <= 100 for line in long)
