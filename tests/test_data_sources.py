"""Reading sources through `datasets`: every local format, several files, folders, hub names."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import datasets
import pytest

from panacea_pl.data import DataError, DimensionSpec, SourceSpec, bind_dimensions, pair_records
from panacea_pl.data.sources import load_source, resolve_local_files

PKU_32 = "pku-saferlhf-align-anything-32/train.json"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def pku_rows(shared_data) -> list[dict]:
    return json.loads((shared_data / PKU_32).read_text())


def write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


def pku(path, name="pku", **kw) -> tuple[SourceSpec, list]:
    spec = SourceSpec(name=name, schema="pku_saferlhf", path=path, **kw)
    dims = [
        DimensionSpec(name="helpful", source=name, field="better_response_id"),
        DimensionSpec(name="harmless", source=name, field="safer_response_id"),
    ]
    return spec, bind_dimensions([spec], dims)[name]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "jsonl.gz", "parquet", "csv"])
def test_every_local_format_gives_the_same_pairs(tmp_path, pku_rows, hf_cache, fmt):
    path = write(tmp_path / f"pku.{fmt}", pku_rows, fmt)
    spec, dims = pku(str(path))
    table, _ = pair_records(spec, dims, 2, cache_dir=hf_cache)
    assert table["labels"] == [
        [1 - 2 * r["better_response_id"], 1 - 2 * r["safer_response_id"]] for r in pku_rows
    ]
    assert table["response_b"] == [r["response_1"] for r in pku_rows]
    assert table["is_safe_a"] == [int(r["is_response_0_safe"]) for r in pku_rows]


def test_several_files_are_one_source_and_rows_are_named_per_file(tmp_path, pku_rows, hf_cache):
    first = write(tmp_path / "a.jsonl", pku_rows[:20], "jsonl")
    bad = [dict(r) for r in pku_rows[20:]]
    bad[3]["response_1"] = ""
    second = write(tmp_path / "b.jsonl", bad, "jsonl")
    spec, dims = pku([str(first), str(second)])
    with pytest.raises(DataError) as err:
        pair_records(spec, dims, 2, cache_dir=hf_cache)
    msg = str(err.value)
    assert f"file '{second}', row 3, field 'response_1'" in msg
    table, report = pair_records(spec, dims, 2, on_bad_row="skip", cache_dir=hf_cache)
    assert len(table) == 31 and report.skipped == {"field 'response_1': empty": 1}
    glob_spec, _ = pku(str(tmp_path / "*.jsonl"))
    assert resolve_local_files(glob_spec) == [str(first), str(second)]


def test_files_with_different_columns_are_refused(tmp_path, pku_rows, hf_cache):
    a = write(tmp_path / "a.jsonl", pku_rows[:3], "jsonl")
    b = write(tmp_path / "b.jsonl", [{"prompt": "x"}], "jsonl")
    spec, _ = pku([str(a), str(b)])
    with pytest.raises(DataError, match="same columns"):
        load_source(spec, hf_cache)


def test_folder_picks_the_file_of_the_split(tmp_path, pku_rows, hf_cache):
    folder = tmp_path / "pku"
    folder.mkdir()
    write(folder / "train.jsonl", pku_rows[:10], "jsonl")
    write(folder / "test.jsonl.gz", pku_rows[10:14], "jsonl.gz")
    spec, _ = pku(str(folder))
    assert len(load_source(spec, hf_cache)[0]) == 10
    spec, _ = pku(str(folder), split="test")
    assert len(load_source(spec, hf_cache)[0]) == 4
    spec, _ = pku(str(folder), split="validation")
    with pytest.raises(DataError, match="exactly one data file for split 'validation'"):
        load_source(spec, hf_cache)


def test_columns_rename_and_max_rows(tmp_path, pku_rows, hf_cache):
    renamed = [{("question" if k == "prompt" else k): v for k, v in r.items()} for r in pku_rows]
    path = write(tmp_path / "q.jsonl", renamed, "jsonl")
    spec, dims = pku(str(path), columns={"question": "prompt"}, max_rows=5)
    table, _ = pair_records(spec, dims, 2, cache_dir=hf_cache)
    assert table["prompt"] == [r["prompt"] for r in pku_rows[:5]]
    # messages name the column as it is in the file
    renamed[2]["question"] = None
    path = write(tmp_path / "q2.jsonl", renamed, "jsonl")
    spec, dims = pku(str(path), columns={"question": "prompt"})
    with pytest.raises(DataError, match=r"row 2, field 'question'"):
        pair_records(spec, dims, 2, cache_dir=hf_cache)


def test_shared_file_is_read_in_place(shared_data, hf_cache):
    spec, _ = pku(str(shared_data / PKU_32))
    rows, where = load_source(spec, hf_cache)
    assert len(rows) == 32 and where.row(5) == f"file '{shared_data / PKU_32}', row 5"


def test_hub_name_is_loaded_through_datasets_and_failure_is_named(hf_cache, monkeypatch):
    calls = {}

    def fake_load_dataset(path, **kwargs):
        calls.update(path=path, **kwargs)
        return datasets.Dataset.from_list([{"prompt": "p", "response_0": "a", "response_1": "b",
                                            "better_response_id": 1, "safer_response_id": 0}])  # fmt: skip

    spec, dims = pku("PKU-Alignment/PKU-SafeRLHF", subset="default", revision="abc")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table, _ = pair_records(spec, dims, 2, cache_dir=hf_cache)
    assert calls["path"] == "PKU-Alignment/PKU-SafeRLHF" and calls["name"] == "default"
    assert calls["split"] == "train" and calls["revision"] == "abc"
    assert table["labels"] == [[-1, 1]]
    monkeypatch.undo()

    spec, _ = pku("nobody-here/no-such-dataset-xyz")
    with pytest.raises(DataError, match="could not load hub dataset 'nobody-here/no-such"):
        load_source(spec, hf_cache)  # offline in tests: fails without network


def test_missing_local_file_and_unknown_ending(tmp_path, hf_cache):
    spec, _ = pku(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_source(spec, hf_cache)
    odd = tmp_path / "rows.txt"
    shutil.copy(__file__, odd)
    spec, _ = pku(str(odd))
    with pytest.raises(DataError, match="unsupported file type"):
        load_source(spec, hf_cache)


PKU_500 = "pku-saferlhf-sample-500/PKU-Alignment_PKU-SafeRLHF_sample.jsonl"


def with_bad_byte(shared_data, tmp_path, row: int = 300, gz: bool = False) -> Path:
    """The real 1.4 MB PKU sample with one 0xff byte inside row `row`'s prompt."""
    lines = (shared_data / PKU_500).read_bytes().split(b"\n")
    start = lines[row].index(b'"prompt": "') + 11
    lines[row] = lines[row][:start] + b"\xff" + lines[row][start:]
    data = b"\n".join(lines)
    path = tmp_path / ("bad.jsonl.gz" if gz else "bad.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def pku_dims(spec):
    dims = [DimensionSpec(name="helpful", source=spec.name, field="better_response_id")]
    return bind_dimensions([spec], dims)[spec.name]


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_row_named_with_file_row_and_offset(shared_data, tmp_path, hf_cache, gz):
    path = with_bad_byte(shared_data, tmp_path, gz=gz)
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(path))
    with pytest.raises(
        DataError,
        match=r"file '.*bad\.jsonl(\.gz)?', row 300 \(line 301\), byte offset \d+: byte 0xff is "
        r"not UTF-8; expected UTF-8 text.*on_bad_row: skip",
    ):
        pair_records(spec, pku_dims(spec), 1, "error", hf_cache)


def test_non_utf8_row_skipped_and_counted(shared_data, tmp_path, hf_cache):
    spec = SourceSpec(
        name="pku", schema="pku_saferlhf", path=str(with_bad_byte(shared_data, tmp_path))
    )
    table, report = pair_records(spec, pku_dims(spec), 1, "skip", hf_cache)
    assert report.skipped == {"not UTF-8 text (whole row)": 1}
    assert len(table) == 499
    clean = json.loads((shared_data / PKU_500).read_text().splitlines()[301])
    assert table[300]["prompt"] == clean["prompt"]  # rows after the bad one are all there
    assert any("not UTF-8" in line for line in report.lines())


def test_rows_keep_their_file_numbers_after_a_drop():
    from panacea_pl.data.errors import Where

    where = Where(description="file 'x'", removed={"file 'x'": [2, 5]})
    assert [where.row(i) for i in (0, 1, 2, 3, 4)] == [
        "file 'x', row 0",
        "file 'x', row 1",
        "file 'x', row 3",
        "file 'x', row 4",
        "file 'x', row 6",
    ]


def test_non_utf8_json_array_cannot_be_skipped(shared_data, tmp_path, hf_cache):
    data = (shared_data / PKU_32).read_bytes()
    path = tmp_path / "bad.json"
    cut = data.index(b'"prompt"', len(data) // 2) + 11
    path.write_bytes(data[:cut] + b"\xfe" + data[cut:])
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(path))
    with pytest.raises(
        DataError,
        match=r"bad\.json', line \d+, byte offset \d+: byte 0xfe is not UTF-8.*cannot be skipped",
    ):
        pair_records(spec, pku_dims(spec), 1, "skip", hf_cache)


def test_non_utf8_csv_row_is_located(pku_rows, tmp_path, hf_cache):
    path = write(tmp_path / "rows.csv", pku_rows, "csv")
    lines = path.read_bytes().split(b"\n")
    lines[5] = lines[5][:10] + b"\xe9" + lines[5][10:]  # a Latin-1 é
    path.write_bytes(b"\n".join(lines))
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(path))
    with pytest.raises(
        DataError, match=r"rows\.csv', line 6, byte offset \d+: byte 0xe9 is not UTF-8.*Re-save"
    ):
        load_source(spec, hf_cache, on_bad_row="skip")
