"""The bounded readers and the quoting helpers of dualcache._untrusted, one rule at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dualcache import ConfigError
from dualcache._untrusted import load_yaml, parse_json, quote, read_bounded, redact_url


def test_load_yaml_keeps_what_real_stack_files_use() -> None:
    text = (
        "base: &base {kv_ttl: 3600}\n"
        "config:\n"
        "  a: *base\n"
        "  b:\n    <<: *base\n    kv_ttl: 60\n"  # a merge key: its own key overrides the merged one
        "  date: 2025-03-11\n"
    )
    assert load_yaml(text, source="f") == {
        "base": {"kv_ttl": 3600},
        "config": {"a": {"kv_ttl": 3600}, "b": {"kv_ttl": 60}, "date": "2025-03-11"},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("a: &a [*a]\n", "alias *a refers to a node that contains it", id="recursive-alias"),
        pytest.param("x: &x 1\n" + "".join(f"k{i}: *x\n" for i in range(65)), "more than 64 aliases", id="aliases"),
        pytest.param("a: 1\nb: 2\na: 3\n", "duplicate key 'a' at line 3 (first at line 1)", id="duplicate"),
        pytest.param("a: [1\n", "is not valid YAML: expected ',' or ']'", id="syntax"),
    ],
)
def test_load_yaml_refuses_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^f") as info:
        load_yaml(text, source="f")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("short", "'short'", id="short"),
        pytest.param("x" * 100, f"{'x' * 60!r}… (100 characters)", id="long-string"),
        pytest.param({"secure": "v1:ciphertext"}, "[secure value not shown]", id="secure"),
        pytest.param({"id": [{"secure": "v1:c"}]}, "[secure value not shown]", id="nested-secure"),
        pytest.param(list(range(1000)), "<list of 1,000 items>", id="big-list"),
    ],
)
def test_quote_shows_a_short_prefix_and_never_a_secret(value: Any, shown: str) -> None:
    assert quote(value) == shown


def test_redact_url_drops_userinfo_only() -> None:
    assert redact_url("https://u:p@h.example:8/v1?q=a@b") == "https://***@h.example:8/v1?q=a@b"
    assert redact_url("https://h.example/a@b") == "https://h.example/a@b"


def test_parse_json_accepts_strings_that_look_like_structure() -> None:
    assert parse_json('{"a": "[[[[{{{{", "b": "\\"]"}', source="f") == {"a": "[[[[{{{{", "b": '"]'}


def test_read_bounded_refuses_a_file_over_its_limit_and_directories(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 11)
    assert read_bounded(path, limit=11, what="file") == b"x" * 11
    with pytest.raises(ConfigError, match="is 11 bytes; the limit is 10 bytes"):
        read_bounded(path, limit=10, what="file")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_bounded(tmp_path, limit=10, what="file")
