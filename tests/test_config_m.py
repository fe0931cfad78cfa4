"""m is stated once per shipped YAML (the top-level `num_preferences`) and reaches every
component that takes it through `${panacea.num_preferences:}`, resolved when the file is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from panacea_pl.cli import run_lightning_cli
from panacea_pl.config_checks import COUNT_KEYS, DimensionMismatchError, dimension_statements

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
GRPO = EXPERIMENTS / "stories" / "panacea_grpo.yaml"  # m in the adapter, reward, data, sweep


def _numbers_of_m(text: str) -> list[str]:
    """Every `num_preferences: <n>` / `num_dimensions: <n>` written as a number (not comments)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return re.findall(rf"\b(?:{'|'.join(COUNT_KEYS)}):\s*\d+", code)


@pytest.mark.parametrize(
    "config", sorted(p.relative_to(EXPERIMENTS).as_posix() for p in EXPERIMENTS.rglob("*.yaml"))
)
def test_a_shipped_yaml_states_m_once(config):
    text = (EXPERIMENTS / config).read_text()
    numbers = _numbers_of_m(text)
    if not numbers and "panacea.num_preferences" not in text:
        return  # a fragment that says nothing about m (strategies, sweeps, …)
    assert len(numbers) == 1, numbers
    assert re.fullmatch(r"num_preferences:\s*\d+", numbers[0])
    assert isinstance(yaml.safe_load(text)["num_preferences"], int)  # at the top level


def _parsed(capsys, config: Path = GRPO) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_the_top_level_m_reaches_every_component(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = dimension_statements(_parsed(capsys))
    assert set(shipped.values()) == {2}
    assert {
        "num_preferences",
        "model.init_args.policy.init_args.adapter.init_args.num_preferences",
        "model.init_args.reward.init_args.num_dimensions",
        "data.init_args.num_dimensions",
        "trainer.callbacks[0].init_args.evaluator.init_args.num_dimensions",
    } <= set(shipped)
    # changing the one number changes them all
    text = GRPO.read_text()
    assert text.count("\nnum_preferences: 2 ") == 1
    (tmp_path / "m3.yaml").write_text(
        text.replace("\nnum_preferences: 2 ", "\nnum_preferences: 3 ")
    )
    assert dimension_statements(_parsed(capsys, tmp_path / "m3.yaml")) == dict.fromkeys(shipped, 3)


def test_m_given_alone_on_the_command_line_is_refused_by_name(tmp_path, monkeypatch):
    """The components were resolved when the file was read: `--num_preferences=3` alone would
    leave them at 2, so the m check refuses the run before anything loads."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DimensionMismatchError) as info:
        run_lightning_cli(["fit", "--config", str(GRPO), "--num_preferences=3"])
    message = str(info.value)
    assert "  num_preferences = 3" in message and "data.init_args.num_dimensions = 2" in message


def test_a_reference_without_the_top_level_m_is_a_parse_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = GRPO.read_text().replace("\nnum_preferences: 2 ", "\n# ")
    (tmp_path / "no_m.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(tmp_path / "no_m.yaml")])
    assert exit_info.value.code == 2
    assert "needs the config's top-level `num_preferences: m`" in capsys.readouterr().err


def test_a_layered_file_using_m_without_stating_it_says_where_to_state_it(
    capsys, tmp_path, monkeypatch
):
    """A fragment over a recipe is resolved on its own: the recipe's m does not reach it, and
    the error says so (the mistake of a user who copies a callback block out of a recipe)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text(
        "data:\n  init_args:\n    num_dimensions: ${panacea.num_preferences:}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", str(GRPO), "--config", str(tmp_path / "mine.yaml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "each config file is resolved on its own" in err and "--config mine.yaml" in err
