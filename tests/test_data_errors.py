"""Bad input gives a clear error naming file, row, field and what was expected — or, with
`on_bad_row: skip`, the row is dropped and counted in the log. Never a traceback from `datasets`."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from panacea_pl.data import (
    ConfigError,
    DataError,
    DimensionSpec,
    SourceSpec,
    bind_dimensions,
    pair_records,
)
from panacea_pl.data.records import sft_records
from panacea_pl.data.schemas import PKUSafeRLHF, get_schema
from panacea_pl.data.sources import load_source

PKU_32 = "pku-saferlhf-align-anything-32/train.json"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture()
def pku_rows(shared_data) -> list[dict]:
    return json.loads((shared_data / PKU_32).read_text())


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_pku(path: Path, cache: str, on_bad_row: str = "error"):
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(path))
    dims = [
        DimensionSpec(name="helpful", source="pku", field="better_response_id"),
        DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
    ]
    return pair_records(spec, bind_dimensions([spec], dims)["pku"], 2, on_bad_row, cache)


def assert_clean(err: pytest.ExceptionInfo) -> str:
    """A DataError whose message stands alone (no chained traceback from datasets)."""
    assert err.type is DataError
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__
    return str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "expected", "reason"),
    [
        ("prompt", None, "expected a non-empty string, got None", "missing (null)"),
        ("response_1", "", "expected a non-empty response string, got ''", "empty"),
        ("response_0", "   \n", "expected a non-empty response string", "empty"),
        ("response_1", 42, "expected a non-empty response string, got 42 (int)", "not a string"),
        (
            "better_response_id",
            2,
            "expected 0 or 1 (the index of the preferred response), got 2",
            "label outside its domain",
        ),  # fmt: skip
        ("is_response_0_safe", "maybe", "expected a safety flag true/false", "not a bool"),
    ],
)
def test_bad_row_error_names_file_row_field_and_expectation(
    tmp_path, pku_rows, hf_cache, field, value, expected, reason
):
    pku_rows[7][field] = value
    path = jsonl(tmp_path / "bad.jsonl", pku_rows)
    with pytest.raises(DataError) as err:
        run_pku(path, hf_cache)
    msg = assert_clean(err)
    assert f"file '{path}', row 7, field '{field}'" in msg
    assert expected in msg

    table, report = run_pku(path, hf_cache, on_bad_row="skip")
    assert len(table) == 31
    assert report.skipped == {f"field '{field}': {reason}": 1}


def test_row_missing_a_key_in_json_lines(tmp_path, pku_rows, hf_cache):
    del pku_rows[4]["response_0"]
    path = jsonl(tmp_path / "bad.jsonl", pku_rows)
    with pytest.raises(DataError) as err:
        run_pku(path, hf_cache)
    assert "row 4, field 'response_0'" in assert_clean(err)


def test_missing_column_names_the_file_and_what_it_should_hold(tmp_path, pku_rows, hf_cache):
    for r in pku_rows:
        del r["safer_response_id"]
    path = jsonl(tmp_path / "bad.jsonl", pku_rows)
    with pytest.raises(DataError) as err:
        run_pku(path, hf_cache, on_bad_row="skip")  # a missing column is never skipped
    msg = assert_clean(err)
    assert str(path) in msg and "'safer_response_id' (0 or 1" in msg and "missing" in msg


def test_skipped_rows_are_counted_in_the_log(tmp_path, pku_rows, hf_cache, caplog):
    pku_rows[1]["response_0"] = ""
    pku_rows[2]["better_response_id"] = 5
    pku_rows[3]["response_0"] = None
    path = jsonl(tmp_path / "bad.jsonl", pku_rows)
    with caplog.at_level(logging.INFO, logger="panacea_pl.data"):
        table, report = run_pku(path, hf_cache, on_bad_row="skip")
    assert len(table) == 29 and sum(report.skipped.values()) == 3
    assert "skipped 3 bad rows (on_bad_row=skip)" in caplog.text
    assert "field 'better_response_id': label outside its domain" in caplog.text


def test_generic_and_rating_labels_outside_their_domain(tmp_path, hf_cache):
    path = jsonl(tmp_path / "g.jsonl", [
        {"prompt": "p", "response_a": "a", "response_b": "b", "pos": 1},
        {"prompt": "q", "response_a": "a", "response_b": "b", "pos": 3},
    ])  # fmt: skip
    spec = SourceSpec(name="g", schema="generic", path=str(path))
    dims = bind_dimensions([spec], [DimensionSpec(name="pos", source="g", field="pos")])["g"]
    with pytest.raises(DataError) as err:
        pair_records(spec, dims, 1, cache_dir=hf_cache)
    assert "row 1, field 'pos': expected a preference label in [-1, 1]" in assert_clean(err)

    path = jsonl(tmp_path / "h.jsonl", [
        {"prompt": "p", "response": "a", "helpfulness": 3},
        {"prompt": "p", "response": "b", "helpfulness": 7},
    ])  # fmt: skip
    spec = SourceSpec(name="h", schema="helpsteer", path=str(path))
    dims = bind_dimensions([spec], [DimensionSpec(name="h", source="h", field="helpfulness")])
    with pytest.raises(DataError) as err:
        pair_records(spec, dims["h"], 1, cache_dir=hf_cache)
    assert "row 1, field 'helpfulness': expected a rating between 0 and 4" in assert_clean(err)


def test_dimension_with_no_labelled_pair(tmp_path, hf_cache):
    path = jsonl(tmp_path / "g.jsonl", [
        {"prompt": "p", "response_a": "a", "response_b": "b", "pos": 1, "short": None},
        {"prompt": "q", "response_a": "a", "response_b": "b", "pos": -1, "short": 0},
    ])  # fmt: skip
    spec = SourceSpec(name="g", schema="generic", path=str(path))
    dims = bind_dimensions([spec], [
        DimensionSpec(name="pos", source="g", field="pos"),
        DimensionSpec(name="short", source="g", field="short"),
    ])["g"]  # fmt: skip
    with pytest.raises(DataError) as err:
        pair_records(spec, dims, 2, cache_dir=hf_cache)
    msg = assert_clean(err)
    assert "dimension 'short' (source 'g', field 'short') has no labelled pair" in msg
    assert str(path) in msg

    path = jsonl(tmp_path / "h.jsonl", [
        {"prompt": "p", "response": "a", "verbosity": 2},
        {"prompt": "p", "response": "b", "verbosity": 2},
    ])  # fmt: skip
    spec = SourceSpec(name="h", schema="helpsteer", path=str(path))
    dims = bind_dimensions([spec], [DimensionSpec(name="v", source="h", field="verbosity")])
    with pytest.raises(DataError, match="dimension 'v' .* has no labelled pair"):
        pair_records(spec, dims["h"], 1, cache_dir=hf_cache)

    path = jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "good": "x", "bad": None}])
    spec = SourceSpec(name="s", schema="sft", path=str(path))
    dims = bind_dimensions([spec], [
        DimensionSpec(name="good", source="s", field="good"),
        DimensionSpec(name="bad", source="s", field="bad"),
    ])["s"]  # fmt: skip
    with pytest.raises(DataError, match="dimension 'bad' .* has no labelled SFT target"):
        sft_records(spec, dims, 2, cache_dir=hf_cache)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("rows.parquet", b'{"prompt": "x"}\n', "not a Parquet file"),
        ("rows.parquet", b"PAR1 this is not really parquet", "could not be read as Parquet"),
        ("rows.jsonl.gz", b'{"prompt": "x"}\n', "not gzip-compressed"),
        ("rows.json", b"prompt,response_0\nx,y\n", "not JSON (it starts with 'prompt,response_0"),
        ("rows.jsonl", b"\xff\xfe\x00\x01binary", "not UTF-8 text"),
        ("rows.csv", b"a,b\n\x00\x00\x00", "not a text CSV file"),
        ("rows.jsonl", b"", "empty; expected JSON rows"),
    ],
)
def test_file_that_is_not_what_its_extension_says(tmp_path, hf_cache, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    spec = SourceSpec(name="s", schema="pku_saferlhf", path=str(path))
    with pytest.raises(DataError) as err:
        load_source(spec, hf_cache)
    msg = assert_clean(err)
    assert f"file '{path}'" in msg and message in msg


def test_json_lines_with_a_broken_line_names_the_row(tmp_path, pku_rows, hf_cache):
    lines = [json.dumps(r) for r in pku_rows[:6]]
    lines[4] = lines[4][:-10]  # cut off the end of the object
    path = tmp_path / "cut.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    spec = SourceSpec(name="s", schema="pku_saferlhf", path=str(path))
    with pytest.raises(DataError) as err:
        load_source(spec, hf_cache)
    msg = assert_clean(err)
    assert f"file '{path}' could not be read as JSON" in msg
    assert "row 4 (line 5) is not valid JSON" in msg


def test_json_array_of_non_objects(tmp_path, hf_cache):
    path = tmp_path / "a.json"
    path.write_text('[{"prompt": "x"}, 3]')
    spec = SourceSpec(name="s", schema="pku_saferlhf", path=str(path))
    with pytest.raises(DataError) as err:
        load_source(spec, hf_cache)
    assert "row 1: expected a JSON object, got int" in assert_clean(err)


def test_configuration_errors():
    pku = SourceSpec(name="pku", schema="pku_saferlhf", path="x.jsonl")
    with pytest.raises(ConfigError, match="unknown schema 'pkuu'"):
        get_schema("pkuu")
    with pytest.raises(ConfigError, match="schema 'no_such.Module' cannot be imported"):
        get_schema("no_such.Module")
    with pytest.raises(ConfigError, match="schema 'panacea_pl.data.SourceSpec' is a type, not"):
        get_schema("panacea_pl.data.SourceSpec")
    assert isinstance(get_schema("panacea_pl.data.schemas.PKUSafeRLHF"), PKUSafeRLHF)
    with pytest.raises(ConfigError, match="source 'nope' is not one of the configured sources"):
        bind_dimensions([pku], [DimensionSpec(name="h", source="nope", field="f")])
    with pytest.raises(ConfigError, match="dimension name 'h' is configured twice"):
        bind_dimensions([pku], [DimensionSpec("h", "pku", "a"), DimensionSpec("h", "pku", "b")])
    with pytest.raises(ConfigError, match="direction must be 'higher' or 'lower'"):
        bind_dimensions([pku], [DimensionSpec("h", "pku", "a", direction="up")])  # type: ignore[arg-type]
    hh = SourceSpec(name="hh", schema="hh_rlhf", path="x.jsonl")
    dims = bind_dimensions([hh], [DimensionSpec("h", "hh", "helpful")])["hh"]
    with pytest.raises(ConfigError, match="field 'helpful' is not a label field of this schema"):
        pair_records(hh, dims, 1)
