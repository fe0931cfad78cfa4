"""What `panacea-pl demo` trains, decided before anything loads: the default recipe and budget,
a user's config at its own length, and the benchmark its sweep will judge against."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panacea_pl import demo, demo_average

ROOT = Path(__file__).resolve().parents[1]
GRPO = ROOT / "experiments" / "stories" / "panacea_grpo.yaml"
DPO = ROOT / "experiments" / "stories" / "panacea_dpo.yaml"


def test_the_default_is_the_rloo_recipe_for_250_iterations():
    configs, steps = demo.training_plan(None, None)
    assert [c.resolve() for c in configs] == [GRPO] and steps == 1000
    recipe = yaml.safe_load(GRPO.read_text())
    assert recipe["model"]["class_path"] == "panacea_pl.modules.PanaceaGRPO"
    # 16 prompts of 8 stories, minibatches of 32 rows, one pass: 4 optimiser steps per iteration
    init = recipe["model"]["init_args"]
    rows = recipe["data"]["init_args"]["batch_size"] * init["group_size"]
    assert steps // (init["epochs"] * rows // init["minibatch_size"]) == 250
    assert demo.training_plan(None, 8) == ([configs[0]], 8)


def test_a_given_config_runs_for_its_own_length_unless_told():
    assert demo.training_plan([DPO], None) == ([DPO], None)
    assert demo.training_plan([DPO, GRPO], 40) == ([DPO, GRPO], 40)


def test_the_benchmark_comes_from_the_data_else_from_the_sweep(tmp_path):
    """DPO's pairs carry the benchmark settings; an on-policy recipe's prompts do not, and its
    sweep's evaluator does."""
    sweep = {
        "trainer": {
            "callbacks": [
                {"class_path": "panacea_pl.callbacks.TrainableEMA", "init_args": {"decay": 0.9}},
                {
                    "class_path": "panacea_pl.callbacks.ParetoSweep",
                    "init_args": {
                        "evaluator": {"init_args": {"benchmark": {"num_prompts": 8, "seed": 3}}}
                    },
                },
            ]
        }
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert demo._benchmark_settings([GRPO]) == {}
    assert demo._benchmark_settings([GRPO, tmp_path / "sweep.yaml"]) == {
        "num_prompts": 8,
        "seed": 3,
    }
    data = {"data": {"init_args": {"benchmark": {"num_prompts": 4}}}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({**sweep, **data}))
    assert demo._benchmark_settings([tmp_path / "data.yaml"]) == {"num_prompts": 4, "seed": 3}


def test_each_averaged_run_keeps_the_recipe_but_the_sweep_and_logs_on_its_own(tmp_path):
    """The demo's runs side by side: their seed, one CSV logger in their own folder, and the
    recipe's callbacks (the weight average) less the Pareto sweep, which only the average gets."""
    seed = {"seed_everything": 5}
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(seed))
    assert demo_average.effective_value([GRPO], "seed_everything") == 0
    assert demo_average.effective_value([GRPO, tmp_path / "seed.yaml"], "seed_everything") == 5
    assert demo_average.effective_value([GRPO], "trainer", "default_root_dir") == "runs/stories"
    assert demo_average.effective_value([GRPO], "trainer", "nothing") is None
    fragment = demo_average.member_fragment([GRPO], tmp_path / "runs" / "seed6", 6)
    assert fragment == tmp_path / "runs" / "seed6.yaml"
    written = yaml.safe_load(fragment.read_text())
    assert written["seed_everything"] == 6
    (logger,) = written["trainer"]["logger"]
    assert logger["init_args"] == {
        "save_dir": str(tmp_path / "runs"),
        "name": "",
        "version": "seed6",
    }
    recipe = yaml.safe_load(GRPO.read_text())["trainer"]["callbacks"]
    assert [c["class_path"] for c in recipe] == [
        "panacea_pl.callbacks.ParetoSweep",
        "panacea_pl.callbacks.TrainableEMA",
    ]
    assert written["trainer"]["callbacks"] == recipe[1:]


def test_several_runs_with_a_multi_process_config_are_refused_before_anything_loads(
    tmp_path, capsys
):
    several = [2, "2", -1, "-1", [0, 1], "0,1"]
    assert all(demo.several_devices(d) for d in several)
    assert not any(demo.several_devices(d) for d in [1, "1", "auto", None, [0], "0,", "0"])
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump({"trainer": {"devices": 2}}))
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config", str(GRPO), "--config", str(tmp_path / "ddp.yaml")])
    assert exit_info.value.code == 2
    assert "trainer.devices: 2 (one process per device); add --runs 1" in capsys.readouterr().err
