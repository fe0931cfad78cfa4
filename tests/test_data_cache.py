"""The data cache on a full disk (the error names the cache folder and says no space is left),
and two writers of one cache entry (the first complete copy stays)."""

from __future__ import annotations

import errno
from pathlib import Path

import datasets
import pytest

from panacea_pl.atomic import publish_folder
from panacea_pl.data import SourceSpec
from panacea_pl.data.cache import DiskFullError, cache_path, is_cached, save_cached
from panacea_pl.data.sources import load_source

PKU_32 = "pku-saferlhf-align-anything-32/train.json"


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_save_cached_on_full_disk_names_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", no_space)
    path = cache_path(tmp_path / "cache", "pairs", "0" * 64)
    table = datasets.Dataset.from_dict({"x": [1, 2]})
    with pytest.raises(DiskFullError, match=r"no space left .* cache folder '.*cache'") as info:
        save_cached(path, {"train_0": table}, {})
    assert info.value.errno == errno.ENOSPC
    assert not is_cached(path)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written copy left


def test_quota_and_pyarrow_text_count_as_full(tmp_path, monkeypatch):
    def quota(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", quota)
    path = cache_path(tmp_path, "pairs", "1" * 64)
    with pytest.raises(DiskFullError, match="quota exceeded"):
        save_cached(path, {"t": datasets.Dataset.from_dict({"x": [1]})}, {})

    def arrow(*args, **kwargs):
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", arrow)
    with pytest.raises(DiskFullError, match="no space left"):
        save_cached(path, {"t": datasets.Dataset.from_dict({"x": [1]})}, {})


def test_reading_a_source_on_full_disk_does_not_blame_the_file(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", no_space)
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(shared_data / PKU_32))
    with pytest.raises(DiskFullError, match=rf"cache folder '{tmp_path / 'hf'}'"):
        load_source(spec, cache_dir=str(tmp_path / "hf"))


def test_other_write_errors_pass_through(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", denied)
    with pytest.raises(PermissionError):
        save_cached(
            cache_path(tmp_path, "p", "2" * 64), {"t": datasets.Dataset.from_dict({"x": [1]})}, {}
        )


def test_publish_folder_keeps_the_first_complete_copy(tmp_path):
    def folder(name: str, marker: str | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        if marker:
            (path / marker).touch()
        return path

    complete = lambda p: (p / "done").is_file()  # noqa: E731
    target = tmp_path / "entry"
    first = folder("a", "done")
    (first / "first").touch()
    assert publish_folder(first, target, complete) == target
    publish_folder(folder("b", "done"), target, complete)  # a second writer, too late
    assert (target / "first").is_file() and not (tmp_path / "b").exists()
    (target / "done").unlink()  # an incomplete entry (a crash in an older version) is replaced
    publish_folder(folder("c", "done"), target, complete)
    assert (target / "done").is_file() and not (tmp_path / "c").exists()
