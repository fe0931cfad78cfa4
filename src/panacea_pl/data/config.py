"""Configuration dataclasses of the data layer: where rows come from and which dimensions they label.

    from panacea_pl.data import DimensionSpec, SourceSpec

    sources = [SourceSpec(name="pku", schema="pku_saferlhf", path="data/pku.jsonl")]
    dimensions = [
        DimensionSpec(name="helpful", source="pku", field="better_response_id"),
        DimensionSpec(name="harmless", source="pku", field="safer_response_id"),
    ]

The same in YAML (LightningCLI builds the dataclasses from it):

    sources:
      - {name: pku, schema: pku_saferlhf, path: data/pku.jsonl}
    dimensions:
      - {name: helpful, source: pku, field: better_response_id}
      - {name: harmless, source: pku, field: safer_response_id}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from panacea_pl.data.errors import ConfigError

Direction = Literal["higher", "lower"]
BadRowPolicy = Literal["error", "skip"]
MixingPolicy = Literal["proportional", "interleaved", "per_dimension"]


@dataclass
class SourceSpec:
    """One dataset: a hub name or local file(s), read through `datasets`, and its schema.

        SourceSpec(name="hh_helpful", schema="hh_rlhf",
                   path=["hh/helpful-base/train.jsonl.gz", "hh/helpful-online/train.jsonl.gz"])
        SourceSpec(name="hh_harmless", schema="hh_rlhf", path="Anthropic/hh-rlhf",
                   data_dir="harmless-base")                       # from the hub (needs network)

    Args:
        name: id that `DimensionSpec.source` refers to; also written in each row's `source`.
        schema: row layout, one of `panacea_pl.data.schemas.SCHEMAS`: `pku_saferlhf`, `hh_rlhf`,
            `helpsteer` (= `helpsteer2`), `ultrafeedback`, `generic`, `sft`, `prompts` — or the
            import path of a `Schema` subclass in your own module (`my_package.MySchema`).
        path: a local file (`.json` array or JSON Lines, `.jsonl`, `.jsonl.gz`, `.json.gz`,
            `.parquet`, `.csv`), a glob, a list of those, a local folder holding one file per
            split (`train.jsonl`, `test.parquet`, ...), or a Hugging Face hub dataset name.
        split: split to read (hub datasets and folders).
        subset: hub configuration name (`load_dataset(path, name=subset)`).
        data_dir: hub sub-folder (`load_dataset(path, data_dir=...)`), e.g. `harmless-base`.
        data_files: hub files to read (`load_dataset(path, data_files=...)`).
        revision: hub revision (commit or tag); pin it so the cache key is stable.
        columns: rename map `{column in the file: column the schema expects}` applied before
            the schema reads the rows, e.g. `{question: prompt}`.
        max_rows: read only the first `max_rows` rows (quick runs).
    """

    name: str
    schema: str
    path: str | list[str]
    split: str = "train"
    subset: str | None = None
    data_dir: str | None = None
    data_files: list[str] | None = None
    revision: str | None = None
    columns: dict[str, str] | None = None
    max_rows: int | None = None


@dataclass
class DimensionSpec:
    """One preference dimension: its name and where its labels come from.

        DimensionSpec(name="concise", source="helpsteer", field="verbosity", direction="lower")

    Args:
        name: the dimension's name (logged as `{stage}/{name}`-style keys downstream).
        source: `SourceSpec.name` of the source whose rows label this dimension.
        field: the source field that carries the label. Per schema: `pku_saferlhf` — a response
            id field (`better_response_id`, `safer_response_id`); `hh_rlhf` — `chosen`;
            `helpsteer` — a rating column (`helpfulness`, `correctness`, `coherence`,
            `complexity`, `verbosity`); `ultrafeedback` — an aspect (`helpfulness`, `honesty`,
            `instruction_following`, `truthfulness`) or `overall_score`; `generic` — a column
            holding 1 / -1 / 0 / null; `sft` — the column holding this dimension's target text.
        direction: `higher` — the response the field prefers (the named id, the chosen
            transcript, the higher rating, label +1 → a) is preferred; `lower` — the opposite
            (e.g. `verbosity` with `lower` is a conciseness dimension).
    """

    name: str
    source: str
    field: str
    direction: Direction = "higher"


@dataclass
class TokenizationSpec:
    """How text becomes token ids: template, special tokens and truncation.

    With a chat template (the tokenizer's own, used when it has one unless
    `use_chat_template: false`) a prompt is one user message and a response the assistant's
    reply. Without one the *plain template* is used:

        prompt text   = prompt_template.format(prompt=prompt)      # default "\\n\\nHuman: {prompt}\\n\\nAssistant:"
        response text = response_template.format(response=response)  # default " {response}"

    The defaults reproduce Anthropic HH-RLHF transcripts exactly. For a raw continuation task
    (e.g. the stories benchmark) use `prompt_template: "{prompt}"`, `response_template: "{response}"`.
    A sequence is `[BOS] + prompt tokens + response tokens + [EOS]`: BOS when the tokenizer has one,
    `add_bos` is set and the template did not already produce it; EOS likewise (a chat template
    that ends its reply with the EOS token gets no second one).

    Truncation: the prompt keeps its *last* `max_prompt_length` tokens (BOS kept in front), the
    response its *first* `max_response_length` tokens (EOS included, so a truncated response has
    no EOS). Counts of truncated rows are logged.

    Args:
        max_prompt_length: most prompt tokens (incl. BOS); None = no limit.
        max_response_length: most response tokens (incl. EOS); None = no limit.
        use_chat_template: True / False to force; None = use it if the tokenizer has one.
        prompt_template: plain template for the prompt; must contain `{prompt}`.
        response_template: plain template for a response; must contain `{response}`.
        add_bos: prepend the tokenizer's BOS token (if it has one).
        add_eos: append the tokenizer's EOS token to every response.
    """

    max_prompt_length: int | None = 512
    max_response_length: int | None = 512
    use_chat_template: bool | None = None
    prompt_template: str = "\n\nHuman: {prompt}\n\nAssistant:"
    response_template: str = " {response}"
    add_bos: bool = True
    add_eos: bool = True

    def __post_init__(self) -> None:
        for name in ("max_prompt_length", "max_response_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 (or null for no limit), got {value}")
        if "{prompt}" not in self.prompt_template:
            raise ConfigError(
                f"prompt_template must contain '{{prompt}}', got {self.prompt_template!r}"
            )
        if "{response}" not in self.response_template:
            raise ConfigError(
                f"response_template must contain '{{response}}', got {self.response_template!r}"
            )


@dataclass(frozen=True)
class BoundDimension:
    """A dimension with its position in the configured order (what schema adapters receive)."""

    index: int
    spec: DimensionSpec = field(compare=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def field(self) -> str:
        return self.spec.field

    @property
    def sign(self) -> int:
        """+1 for `direction: higher`, -1 for `lower`: multiplies every label of the dimension."""
        return 1 if self.spec.direction == "higher" else -1


def bind_dimensions(
    sources: Sequence[SourceSpec], dimensions: Sequence[DimensionSpec]
) -> dict[str, list[BoundDimension]]:
    """Check the configuration and group the dimensions by the source that labels them
    (the schemas themselves are resolved by `panacea_pl.data.schemas.get_schema`).

    Returns:
        `{source name: [BoundDimension, ...]}` for every source, in configured order (a source
        no dimension uses maps to an empty list).

    Raises:
        ConfigError: duplicate source or dimension names, a dimension naming an unknown source,
            or an unknown direction.
    """
    names = [s.name for s in sources]
    _no_duplicates(names, "source")
    _no_duplicates([d.name for d in dimensions], "dimension")
    bound: dict[str, list[BoundDimension]] = {name: [] for name in names}
    for index, dim in enumerate(dimensions):
        if dim.source not in bound:
            raise ConfigError(
                f"dimension '{dim.name}': source '{dim.source}' is not one of the configured "
                f"sources {names}"
            )
        if dim.direction not in ("higher", "lower"):
            raise ConfigError(
                f"dimension '{dim.name}': direction must be 'higher' or 'lower', "
                f"got {dim.direction!r}"
            )
        bound[dim.source].append(BoundDimension(index, dim))
    return bound


def _no_duplicates(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{what} name '{name}' is configured twice; names must be unique")
        seen.add(name)
