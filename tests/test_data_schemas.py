"""Schema adapters on the real samples in ../shared/data: counts checked against the raw files."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from panacea_pl.data import (
    DataError,
    DimensionSpec,
    SourceSpec,
    TokenizationSpec,
    bind_dimensions,
    pair_records,
    prompt_records,
    sft_records,
)
from panacea_pl.data.schemas.hh_rlhf import split_transcripts

PKU_500 = "pku-saferlhf-sample-500/PKU-Alignment_PKU-SafeRLHF_sample.jsonl"
PKU_32 = "pku-saferlhf-align-anything-32/train.json"
HELPSTEER = "helpsteer-sample-500/nvidia_HelpSteer_sample.jsonl"
HH = {
    "harmless-base": "hh-rlhf-harmless-test/test.jsonl.gz",
    "helpful-base": "hh-rlhf-helpful-base-test/test.jsonl.gz",
    "helpful-online": "hh-rlhf-helpful-online-test/test.jsonl.gz",
    "helpful-rejection-sampled": "hh-rlhf-helpful-rejection-sampled-test/test.jsonl.gz",
}
ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_cache"))


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pairs(sources, dimensions, cache, on_bad_row="error"):
    """(table, report) of the first source, with dimensions bound in configured order."""
    bound = bind_dimensions(sources, dimensions)
    spec = sources[0]
    return pair_records(spec, bound[spec.name], len(dimensions), on_bad_row, cache)


def pku_dims(source: str = "pku") -> list[DimensionSpec]:
    return [
        DimensionSpec(name="helpful", source=source, field="better_response_id"),
        DimensionSpec(name="harmless", source=source, field="safer_response_id"),
    ]


# ---- PKU-SafeRLHF -------------------------------------------------------------------------------


def test_pku_current_schema_matches_raw_rows(shared_data, hf_cache):
    path = shared_data / PKU_500
    raw = read_rows(path)
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(path))
    table, report = pairs([spec], pku_dims(), hf_cache)

    assert len(table) == 500 and report.rows == 500 and report.records == 500
    labels = np.asarray(table["labels"])
    assert labels.shape == (500, 2)
    # README: better 0:159 / 1:341, safer 0:144 / 1:356, disagree on 117 pairs
    assert Counter(labels[:, 0].tolist()) == {1: 159, -1: 341}
    assert Counter(labels[:, 1].tolist()) == {1: 144, -1: 356}
    assert int((labels[:, 0] != labels[:, 1]).sum()) == 117
    assert report.labelled == {"helpful": {"a": 159, "b": 341}, "harmless": {"a": 144, "b": 356}}
    # and row by row against the raw file
    assert labels[:, 0].tolist() == [1 if r["better_response_id"] == 0 else -1 for r in raw]
    assert labels[:, 1].tolist() == [1 if r["safer_response_id"] == 0 else -1 for r in raw]
    assert table["response_a"] == [r["response_0"] for r in raw]
    assert table["response_b"] == [r["response_1"] for r in raw]
    assert table["prompt"] == [r["prompt"] for r in raw]
    assert table["is_safe_a"] == [int(r["is_response_0_safe"]) for r in raw]
    assert sum(table["is_safe_a"]) == 222 and sum(table["is_safe_b"]) == 224
    assert sum(a != b for a, b in zip(table["is_safe_a"], table["is_safe_b"], strict=True)) == 48
    assert set(table["source"]) == {"pku"}


def test_pku_classic_seven_field_schema(shared_data, hf_cache):
    path = shared_data / PKU_32
    raw = read_rows(path)
    assert set(raw[0]) == {
        "prompt",
        "response_0",
        "response_1",
        "is_response_0_safe",
        "is_response_1_safe",
        "better_response_id",
        "safer_response_id",
    }
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(path))
    table, report = pairs([spec], pku_dims(), hf_cache)
    labels = np.asarray(table["labels"])
    # README: better 0×13, 1×19; safer 0×16, 1×16; disagree 19
    assert Counter(labels[:, 0].tolist()) == {1: 13, -1: 19}
    assert Counter(labels[:, 1].tolist()) == {1: 16, -1: 16}
    assert int((labels[:, 0] != labels[:, 1]).sum()) == 19
    assert table["is_safe_b"] == [int(r["is_response_1_safe"]) for r in raw]


def test_direction_lower_flips_and_labels_follow_configured_order(shared_data, hf_cache):
    path = str(shared_data / PKU_32)
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=path)
    other = SourceSpec(name="other", schema="generic", path=path)
    dims = [
        DimensionSpec(name="x", source="other", field="unused"),
        DimensionSpec(name="harmful", source="pku", field="safer_response_id", direction="lower"),
        DimensionSpec(name="helpful", source="pku", field="better_response_id"),
    ]
    bound = bind_dimensions([spec, other], dims)
    table, _ = pair_records(spec, bound["pku"], 3, cache_dir=hf_cache)
    raw = read_rows(Path(path))
    labels = np.asarray(table["labels"])
    assert (labels[:, 0] == 0).all()  # dimension of another source: unlabelled here
    assert labels[:, 1].tolist() == [-1 if r["safer_response_id"] == 0 else 1 for r in raw]
    assert labels[:, 2].tolist() == [1 if r["better_response_id"] == 0 else -1 for r in raw]


# ---- HH-RLHF ------------------------------------------------------------------------------------


def _final_turn(transcript: str) -> str:
    return transcript.rpartition("\n\nAssistant:")[2]


@pytest.mark.parametrize(
    ("subset", "identical", "empty"),
    [
        ("helpful-base", 2, 4),
        ("helpful-online", 2, 3),
        ("helpful-rejection-sampled", 32, 0),
        ("harmless-base", 0, 4),
    ],
)
def test_hh_rlhf_identical_rows_reported_not_trained(
    shared_data, hf_cache, subset, identical, empty
):
    path = shared_data / HH[subset]
    raw = read_rows(path)
    # independent counts from the raw transcripts
    assert sum(r["chosen"] == r["rejected"] for r in raw) == identical
    empty_rows = [
        i
        for i, r in enumerate(raw)
        if not _final_turn(r["chosen"]).strip() or not _final_turn(r["rejected"]).strip()
    ]
    assert len(empty_rows) == empty

    spec = SourceSpec(name="helpful", schema="hh_rlhf", path=str(path))
    dims = [DimensionSpec(name="helpful", source="helpful", field="chosen")]
    table, report = pairs([spec], dims, hf_cache, on_bad_row="skip")
    assert report.dropped.get("pairs with identical responses", 0) == identical
    assert sum(report.skipped.values()) == empty
    assert len(table) == len(raw) - identical - empty
    assert all(a != b for a, b in zip(table["response_a"], table["response_b"], strict=True))
    assert set(map(tuple, table["labels"])) == {(1,)}
    assert set(table["is_safe_a"]) == {-1}


def test_hh_rlhf_split_rebuilds_the_transcripts_with_the_default_template(shared_data):
    spec = TokenizationSpec()
    for subset in HH.values():
        for row in read_rows(shared_data / subset):
            prompt, chosen, rejected = split_transcripts(row["chosen"], row["rejected"])
            head = spec.prompt_template.replace("{prompt}", prompt)
            assert head + spec.response_template.replace("{response}", chosen) == row["chosen"]
            assert head + spec.response_template.replace("{response}", rejected) == row["rejected"]


def test_hh_rlhf_prompt_is_the_shared_prefix_even_when_a_reply_has_extra_turns():
    chosen = "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Price?\n\nAssistant: 5 dollars."
    rejected = (
        "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Price?\n\nAssistant: Umm.\n\nAssistant: 9."
    )
    prompt, a, b = split_transcripts(chosen, rejected)
    assert prompt == "Hi?\n\nAssistant: Hello.\n\nHuman: Price?"
    assert a == "5 dollars."
    assert b == "Umm.\n\nAssistant: 9."


def test_hh_rlhf_empty_final_turn_is_an_error_by_default(shared_data, hf_cache):
    from panacea_pl.data import DataError

    path = shared_data / HH["harmless-base"]
    raw = read_rows(path)
    first = next(i for i, r in enumerate(raw) if not _final_turn(r["chosen"]).strip())
    spec = SourceSpec(name="harmless", schema="hh_rlhf", path=str(path))
    dims = [DimensionSpec(name="harmless", source="harmless", field="chosen")]
    with pytest.raises(DataError) as err:
        pairs([spec], dims, hf_cache)
    msg = str(err.value)
    assert str(path) in msg and f"row {first}," in msg and "field 'chosen'" in msg
    assert "expected a non-empty final Assistant turn" in msg and "on_bad_row: skip" in msg


# ---- HelpSteer ----------------------------------------------------------------------------------


def helpsteer_expected(raw: list[dict], attributes: list[str], signs: list[int]):
    """Independent count: group by prompt, average duplicate responses, compare every pair."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in raw:
        groups.setdefault(r["prompt"], {}).setdefault(r["response"], []).append(r)
    kept = 0
    per_attr = {a: {"a": 0, "b": 0} for a in attributes}
    for responses in groups.values():
        means = [
            {a: np.mean([r[a] for r in rows]) for a in attributes} for rows in responses.values()
        ]
        for x, y in combinations(means, 2):
            diffs = [np.sign(x[a] - y[a]) * s for a, s in zip(attributes, signs, strict=True)]
            if any(diffs):
                kept += 1
            for a, d in zip(attributes, diffs, strict=True):
                if d > 0:
                    per_attr[a]["a"] += 1
                elif d < 0:
                    per_attr[a]["b"] += 1
    return kept, per_attr


def test_helpsteer_within_prompt_pairs_per_attribute(shared_data, hf_cache):
    path = shared_data / HELPSTEER
    raw = read_rows(path)
    assert len({r["prompt"] for r in raw}) == 139
    assert len({(r["prompt"], r["response"]) for r in raw}) == 472

    spec = SourceSpec(name="hs", schema="helpsteer", path=str(path))
    dims = [DimensionSpec(name=a, source="hs", field=a) for a in ATTRIBUTES]
    table, report = pairs([spec], dims, hf_cache)
    kept, per_attr = helpsteer_expected(raw, ATTRIBUTES, [1] * 5)
    assert len(table) == kept == 572
    assert report.labelled == per_attr
    assert report.dropped["duplicate responses merged (ratings averaged)"] == 500 - 472
    assert per_attr["helpfulness"] == {"a": 220, "b": 164}
    labels = np.asarray(table["labels"])
    assert labels.shape == (572, 5)
    # every pair is two different responses to the same prompt
    by_prompt = {}
    for r in raw:
        by_prompt.setdefault(r["prompt"], set()).add(r["response"])
    for p, a, b in zip(table["prompt"], table["response_a"], table["response_b"], strict=True):
        assert a != b and a in by_prompt[p] and b in by_prompt[p]


def test_helpsteer_ties_dropped_and_direction(shared_data, hf_cache):
    path = shared_data / HELPSTEER
    raw = read_rows(path)
    spec = SourceSpec(name="hs", schema="helpsteer", path=str(path))
    dims = [
        DimensionSpec(name="helpful", source="hs", field="helpfulness"),
        DimensionSpec(name="concise", source="hs", field="verbosity", direction="lower"),
    ]
    table, report = pairs([spec], dims, hf_cache)
    kept, per_attr = helpsteer_expected(raw, ["helpfulness", "verbosity"], [1, -1])
    assert len(table) == kept
    assert report.labelled == {"helpful": per_attr["helpfulness"], "concise": per_attr["verbosity"]}
    only, per_attr_1 = helpsteer_expected(raw, ["helpfulness"], [1])
    table_1, _ = pairs([spec], dims[:1], hf_cache)
    assert len(table_1) == only == sum(per_attr_1["helpfulness"].values())  # ties dropped


# ---- UltraFeedback (no real sample exists; rows follow openbmb/UltraFeedback's layout) ---------


def _completion(text, ratings, overall):
    return {
        "model": "m",
        "response": text,
        "overall_score": overall,
        "annotations": {k: {"Rating": v, "Rationale": "..."} for k, v in ratings.items()},
    }


def test_ultrafeedback_aspect_pairs(tmp_path, hf_cache):
    rows = [
        {
            "source": "evol_instruct",
            "instruction": "Name a prime.",
            "models": ["m"] * 3,
            "completions": [
                _completion("2", {"helpfulness": "5", "honesty": "4"}, 9.0),
                _completion("9", {"helpfulness": "2", "honesty": "N/A"}, 3.0),
                _completion("7", {"helpfulness": "5", "honesty": "2"}, 8.5),
            ],
        },
        {
            "source": "x",
            "instruction": "Say hi.",
            "models": ["m"] * 2,
            "completions": [
                _completion("hi", {"helpfulness": "3", "honesty": "3"}, 5.0),
                _completion("hello", {"helpfulness": "3", "honesty": "3"}, 5.0),
            ],
        },
    ]
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = SourceSpec(name="uf", schema="ultrafeedback", path=str(path))
    dims = [
        DimensionSpec(name="helpful", source="uf", field="helpfulness"),
        DimensionSpec(name="honest", source="uf", field="honesty"),
        DimensionSpec(name="overall", source="uf", field="overall_score"),
    ]
    table, report = pairs([spec], dims, hf_cache)
    got = {
        (a, b): tuple(lab)
        for a, b, lab in zip(table["response_a"], table["response_b"], table["labels"], strict=True)
    }
    assert got == {
        ("2", "9"): (1, 0, 1),  # honesty N/A → unlabelled
        ("2", "7"): (0, 1, 1),  # helpfulness tie
        ("9", "7"): (-1, 0, -1),
    }
    assert report.dropped == {"pairs unlabelled or tied in every dimension": 1}
    assert set(table["prompt"]) == {"Name a prime."}


# ---- generic, SFT and prompt schemas ------------------------------------------------------------


def test_generic_schema_labels_nulls_and_safety(tmp_path, hf_cache):
    rows = [
        {"prompt": "p1", "response_a": "a", "response_b": "b", "pos": 1, "short": None},
        {"prompt": "p2", "response_a": "a", "response_b": "b", "pos": -1, "short": 1},
        {"prompt": "p3", "response_a": "a", "response_b": "b", "pos": 0, "short": None},
        {"prompt": "p4", "response_a": "a", "response_b": "b", "pos": None, "short": -1},
    ]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = SourceSpec(name="stories", schema="generic", path=str(path))
    dims = [
        DimensionSpec(name="positive", source="stories", field="pos"),
        DimensionSpec(name="short", source="stories", field="short"),
    ]
    table, report = pairs([spec], dims, hf_cache)
    assert table["labels"] == [[1, 0], [-1, 1], [0, -1]]
    assert table["prompt"] == ["p1", "p2", "p4"]
    assert report.dropped == {"pairs unlabelled or tied in every dimension": 1}
    assert set(table["is_safe_a"]) == {-1}


def test_generic_schema_soft_labels_and_bad_labels(tmp_path, hf_cache):
    rows = [
        {"prompt": "p1", "response_a": "a", "response_b": "b", "pos": 0.5},
        {"prompt": "p2", "response_a": "a", "response_b": "b", "pos": -0.25},
        {"prompt": "p3", "response_a": "a", "response_b": "b", "pos": 1.5},
        {"prompt": "p4", "response_a": "a", "response_b": "b", "pos": "high"},
    ]
    path = tmp_path / "soft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dims = [DimensionSpec(name="positive", source="stories", field="pos")]
    spec = SourceSpec(name="stories", schema="generic", path=str(path))
    with pytest.raises(DataError, match=r"row 2.*field 'pos'.*in \[-1, 1\].*got 1.5"):
        pairs([spec], dims, hf_cache)
    table, report = pairs([spec], dims, hf_cache, on_bad_row="skip")
    assert table["labels"] == [[0.5], [-0.25]]
    assert sum(report.skipped.values()) == 2


def test_sft_schema_and_sft_from_pairs(tmp_path, shared_data, hf_cache):
    rows = [
        {"prompt": "p1", "helpful": "sure, here", "harmless": "I can't"},
        {"prompt": "p2", "helpful": None, "harmless": "no"},
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = SourceSpec(name="sft", schema="sft", path=str(path))
    dims = [
        DimensionSpec(name="helpful", source="sft", field="helpful"),
        DimensionSpec(name="harmless", source="sft", field="harmless"),
    ]
    bound = bind_dimensions([spec], dims)
    table, report = sft_records(spec, bound["sft"], 2, cache_dir=hf_cache)
    assert list(zip(table["prompt"], table["target"], table["dimension"], strict=True)) == [
        ("p1", "sure, here", 0),
        ("p1", "I can't", 1),
        ("p2", "no", 1),
    ]
    assert report.labelled == {"helpful": {"targets": 1}, "harmless": {"targets": 2}}

    pku = SourceSpec(name="pku", schema="pku_saferlhf", path=str(shared_data / PKU_32))
    bound = bind_dimensions([pku], pku_dims())
    table, _ = sft_records(pku, bound["pku"], 2, cache_dir=hf_cache)
    raw = read_rows(shared_data / PKU_32)
    expected = [
        (r["prompt"], r[f"response_{r[field]}"], d)
        for r in raw
        for d, field in enumerate(["better_response_id", "safer_response_id"])
    ]
    assert list(zip(table["prompt"], table["target"], table["dimension"], strict=True)) == expected


def test_prompt_records_from_several_schemas(shared_data, hf_cache):
    raw = read_rows(shared_data / PKU_500)
    spec = SourceSpec(name="pku", schema="pku_saferlhf", path=str(shared_data / PKU_500))
    table, report = prompt_records(spec, cache_dir=hf_cache)
    assert len(table) == 490 == len({r["prompt"] for r in raw})
    assert report.dropped == {"repeated prompts": 10}

    spec = SourceSpec(name="hs", schema="helpsteer", path=str(shared_data / HELPSTEER))
    assert len(prompt_records(spec, cache_dir=hf_cache)[0]) == 139

    path = shared_data / HH["helpful-online"]
    spec = SourceSpec(name="hh", schema="hh_rlhf", path=str(path))
    table, _ = prompt_records(spec, cache_dir=hf_cache)
    expected = {split_transcripts(r["chosen"], r["rejected"])[0] for r in read_rows(path)}
    assert set(table["prompt"]) == expected


def test_helpsteer_missing_ratings_counted_per_dimension(shared_data, hf_cache, tmp_path, caplog):
    """Rows without a rating stay (unrated) and are counted per dimension in the summary."""
    raw = read_rows(shared_data / HELPSTEER)
    for i in (3, 10, 300):
        raw[i]["helpfulness"] = None
    raw[7]["verbosity"] = "N/A"
    path = tmp_path / "helpsteer.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in raw))
    spec = SourceSpec(name="hs", schema="helpsteer", path=str(path))
    dims = [
        DimensionSpec(name="helpful", source="hs", field="helpfulness"),
        DimensionSpec(name="concise", source="hs", field="verbosity", direction="lower"),
    ]
    with caplog.at_level("INFO", logger="panacea_pl.data"):
        _, report = pairs([spec], dims, hf_cache)
    assert report.unrated == {"helpful": 3, "concise": 1}
    assert "dimension 'helpful': 3 responses have no rating (null or N/A)" in caplog.text
    assert "dimension 'concise': 1 responses have no rating" in caplog.text
    _, clean = pairs(
        [SourceSpec(name="hs", schema="helpsteer", path=str(shared_data / HELPSTEER))],
        dims,
        hf_cache,
    )
    assert clean.unrated == {}
