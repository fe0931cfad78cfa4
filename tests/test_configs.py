"""The shipped YAMLs: every file under experiments/ parses with the real CLI parser and names
importable classes; the CPU-sized ones (`*local.yaml`) train for two steps and leave a checkpoint,
metrics and the resolved config; a user's subclasses plug in through `class_path`."""

from __future__ import annotations

import csv
import importlib
import math
from pathlib import Path

import pytest
import torch
import wandb
import yaml
from omegaconf import OmegaConf

from panacea_pl.cli import main as cli_main
from panacea_pl.cli import run_lightning_cli
from panacea_pl.modules import PanaceaDPO
from panacea_pl.modules.base import SAMPLER_STATE_KEY
from panacea_pl.objectives import Aggregator
from panacea_pl.resolvers import register_resolvers, stories_model_dir
from test_entry_points import assert_quiet

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO_ROOT / "experiments"
# Not whole `fit` configs: W&B sweep files (tests/test_sweeps.py), trainer fragments layered
# over a config with a second --config (tests/test_strategies_gpu.py) and the stories recipes'
# layers (test_stories_adapter_layers).
NOT_FIT_CONFIGS = ("sweeps/", "strategies/", "stories/layers/")
ALL_CONFIGS = sorted(
    c
    for c in (p.relative_to(EXPERIMENTS).as_posix() for p in EXPERIMENTS.rglob("*.yaml"))
    if not c.startswith(NOT_FIT_CONFIGS)
)

# The CPU-sized configs, each with the folder its first (CSV) logger writes runs to.
LOCAL_RUNS = {
    "pku_saferlhf/panacea_dpo_local.yaml": "runs/pku_saferlhf_local/panacea_dpo",
    "hh_rlhf/panacea_dpo_local.yaml": "runs/hh_rlhf_local/panacea_dpo",
    "helpsteer/panacea_dpo_local.yaml": "runs/helpsteer_local/panacea_dpo",
    "reward_model/pku_local.yaml": "runs/reward_model_local/pku_cost",
    "sft/pku_local.yaml": "runs/sft_local/panacea_sft",
}
# CPU-sized configs that need another run's output first, with the test that runs them.
LOCAL_RUNS_AFTER = {
    "pku_saferlhf/panacea_grpo_local.yaml": "test_local_grpo_config_runs_on_the_local_scorer",
}
SHORT_RUN = [
    "--trainer.max_steps=2",
    "--trainer.val_check_interval=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session")
def stories_cache(tmp_path_factory) -> Path:
    """A fresh cache for the converted stories260K model (conversion takes about a second)."""
    return tmp_path_factory.mktemp("stories_cache")


@pytest.fixture
def in_run_dir(tmp_path, monkeypatch, shared_data, stories_cache) -> Path:
    """Run as a user would from a checkout, but in tmp_path: the configs' relative `runs/…`
    land there; the data comes from $PANACEA_DATA_DIR. One torch thread: the models are tiny,
    and a second thread only waits on a busy CPU."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANACEA_DATA_DIR", str(shared_data))
    monkeypatch.setenv("PANACEA_CACHE_DIR", str(stories_cache))
    monkeypatch.setenv("WANDB_MODE", "offline")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
    wandb.finish()  # else the next run in this process would log into this one's W&B run


def class_paths(node) -> list[str]:
    """Every `class_path` value in a parsed config, depth first."""
    if isinstance(node, dict):
        found = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return found + [p for value in node.values() for p in class_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in class_paths(value)]
    return []


def import_object(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def fit(config: str | Path, tmp_path: Path, *extra: str):
    return run_lightning_cli(
        ["fit", "--config", str(config), f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
        + SHORT_RUN
        + list(extra)
    )


def read_metrics(version: Path) -> list[dict[str, str]]:
    with open(version / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def last_value(rows: list[dict[str, str]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key)]
    assert values, f"{key} was never logged; logged keys: {sorted(rows[0]) if rows else []}"
    return values[-1]


# ---- every YAML parses ------------------------------------------------------------------------


def test_every_local_config_is_run():
    # a new CPU-sized config gets run by this file: list it in LOCAL_RUNS (or LOCAL_RUNS_AFTER,
    # naming the test that runs it)
    local = {c for c in ALL_CONFIGS if c.endswith("local.yaml")}
    assert local == set(LOCAL_RUNS) | set(LOCAL_RUNS_AFTER)
    assert all(callable(globals().get(test)) for test in LOCAL_RUNS_AFTER.values())


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_config_parses(config, in_run_dir, capsys):
    """The real `fit` parser (`panacea-pl baseline`'s for a baseline YAML) reads the file
    (omegaconf interpolation included) and checks every
    init_args against its class's signature; nothing is instantiated, so 7B configs that name
    hub models and the stories config (whose DataModule samples for a minute) are safe."""
    path = EXPERIMENTS / config
    with pytest.raises(SystemExit) as exit_info:
        if "baseline" in yaml.safe_load(path.read_text()):  # `panacea-pl baseline`'s parser
            cli_main(["baseline", "--config", str(path), "--print_config"])
        else:
            run_lightning_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert "${" not in yaml.safe_dump(parsed), "an interpolation was left unresolved"
    paths = class_paths(parsed)
    assert parsed["model"]["class_path"] in paths and parsed["data"]["class_path"] in paths
    for dotted in paths:
        assert callable(import_object(dotted)), dotted
    loggers = [logger["class_path"] for logger in parsed["trainer"]["logger"]]
    assert "panacea_pl.loggers.WandbLogger" in loggers


ATTENTION_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _parsed_adapter(capsys, *configs: Path) -> dict:
    """The stories policy's adapter settings after LightningCLI parses `configs` in order."""
    argv = ["fit"] + [arg for path in configs for arg in ("--config", str(path))]
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli([*argv, "--print_config"])
    assert exit_info.value.code in (0, None)
    parsed = yaml.safe_load(capsys.readouterr().out)
    return parsed["model"]["init_args"]["policy"]["init_args"]["adapter"]["init_args"]


@pytest.mark.parametrize(
    ("recipe", "layer", "targets"),
    [
        ("panacea_dpo.yaml", None, [*ATTENTION_MLP, "lm_head"]),
        ("panacea_grpo.yaml", None, [*ATTENTION_MLP, "lm_head"]),
        ("panacea_ppo.yaml", None, None),  # the model type's default layers
        ("panacea_dpo.yaml", "attention_mlp_only.yaml", ATTENTION_MLP),
        ("panacea_ppo.yaml", "output_layer.yaml", [*ATTENTION_MLP, "lm_head"]),
        ("panacea_online_dpo.yaml", "output_layer.yaml", [*ATTENTION_MLP, "lm_head"]),
    ],
)
def test_stories_adapter_layers(recipe, layer, targets, in_run_dir, capsys):
    """Which layers a stories recipe adapts, alone and with a `stories/layers/` file after it
    as that file's comment says to use it (a second --config): the layer changes only
    `target_modules`, the recipe's m and rank stay."""
    configs = [EXPERIMENTS / "stories" / recipe]
    if layer:
        configs.append(EXPERIMENTS / "stories" / "layers" / layer)
    adapter = _parsed_adapter(capsys, *configs)
    assert adapter["target_modules"] == targets
    assert adapter["num_preferences"] == 2 and adapter["num_general"] == 0


def test_paper_setting_config(in_run_dir, capsys):
    """The 7B PKU-SafeRLHF config says what the README promises: bf16 7B policy, several GPUs,
    m = 2 helpful/harmless, a checkpoint that saves last and a Pareto sweep."""
    with pytest.raises(SystemExit):
        run_lightning_cli(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / "pku_saferlhf/panacea_dpo_7b.yaml"),
                "--print_config",
            ]
        )
    cfg = yaml.safe_load(capsys.readouterr().out)
    trainer, model = cfg["trainer"], cfg["model"]["init_args"]
    assert trainer["accelerator"] == "gpu" and trainer["devices"] > 1
    assert trainer["precision"] == "bf16-mixed"
    policy = model["policy"]["init_args"]
    assert "7b" in policy["model_name_or_path"].lower() and policy["dtype"] == "bfloat16"
    adapter = policy["adapter"]  # the adapter config is parsed as a class: {class_path, init_args}
    assert adapter["class_path"] == "panacea_pl.layers.PanaceaConfig"
    assert adapter["init_args"]["num_preferences"] == 2
    dims = [d["name"] for d in cfg["data"]["init_args"]["dimensions"]]
    assert dims == ["helpful", "harmless"]
    callbacks = {c["class_path"]: c["init_args"] for c in trainer["callbacks"]}
    assert callbacks["lightning.pytorch.callbacks.ModelCheckpoint"]["save_last"] is True
    assert "panacea_pl.callbacks.ParetoSweep" in callbacks


def test_stories_model_resolver_is_relative_to_the_launch_dir(shared_data, in_run_dir, monkeypatch):
    """jsonargparse reads a config from inside its folder; `${panacea.stories_model:DIR}` must
    still read a relative DIR from where the command was started."""
    launch = shared_data.resolve().parent
    monkeypatch.chdir(launch)
    register_resolvers()
    monkeypatch.chdir(in_run_dir)  # what jsonargparse does while it loads a config file
    cfg = OmegaConf.create({"tokenizer": "${panacea.stories_model:" + shared_data.name + "}"})
    folder = Path(cfg.tokenizer)
    assert folder == Path(stories_model_dir(str(shared_data)))
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()


# ---- the CPU-sized configs run -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(LOCAL_RUNS))
def test_local_config_runs(config, in_run_dir):
    cli = fit(EXPERIMENTS / config, in_run_dir)
    version = in_run_dir / LOCAL_RUNS[config] / "version_0"
    assert Path(cli.trainer.log_dir).resolve() == version.resolve()
    assert cli.trainer.global_step == 2

    checkpoint = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2 and checkpoint["state_dict"]
    rows = read_metrics(version)
    assert math.isfinite(last_value(rows, "train/loss"))
    assert math.isfinite(last_value(rows, "val/loss"))

    saved = yaml.safe_load((version / "config.yaml").read_text())
    shipped = yaml.safe_load((EXPERIMENTS / config).read_text())
    assert saved["model"]["class_path"] == shipped["model"]["class_path"]
    assert saved["data"]["class_path"] == shipped["data"]["class_path"]
    assert "${" not in (version / "config.yaml").read_text()  # saved resolved
    assert (in_run_dir / Path(LOCAL_RUNS[config]).parent / "wandb").is_dir()  # W&B, offline

    if isinstance(cli.model, PanaceaDPO):
        assert SAMPLER_STATE_KEY in checkpoint
        # the adapter is checkpointed, not the frozen base
        frozen = {n for n, p in cli.model.named_parameters() if not p.requires_grad}
        assert frozen and not frozen & set(checkpoint["state_dict"])
        names = cli.datamodule.dimension_names
        for name in names:
            assert 0.0 <= last_value(rows, f"val/{name}/accuracy") <= 1.0
        assert (version / "pareto" / "final.csv").is_file()
        assert 0.0 <= last_value(rows, "pareto/hypervolume_final") <= 1.0
    if config.startswith("reward_model/"):
        assert (version / "scorer" / "scorer_config.json").is_file()
        assert math.isfinite(last_value(rows, "val/cost/loss"))


@pytest.mark.slow
def test_local_grpo_config_runs_on_the_local_scorer(
    shared_data, stories_cache, tmp_path, panacea_cli
):
    """The README's order as `panacea-pl` commands (each in its own process, `panacea_cli`),
    from a fresh folder: train the stories260K helpful + cost scorer
    (`reward_model/pku_local.yaml`, 2 steps), then
    Panacea-GRPO on the PKU prompts (`pku_saferlhf/panacea_grpo_local.yaml`, 2 iterations)
    reading that scorer at the path the config ships with: exit 0, a checkpoint, rewards logged
    per dimension, a Pareto sweep scored by the scorer."""
    env = {
        "PANACEA_DATA_DIR": str(shared_data),
        "PANACEA_CACHE_DIR": str(stories_cache),
        "WANDB_MODE": "offline",
    }
    quiet = [
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
    ]
    csv_only = "--trainer.logger=lightning.pytorch.loggers.CSVLogger"

    def panacea_pl(config: str, *extra: str) -> None:
        args = ["fit", "--config", str(EXPERIMENTS / config)]
        args += [f"--data.init_args.cache_dir={tmp_path / 'cache'}", *quiet, *extra]
        code, out = panacea_cli.run(args, cwd=tmp_path, env=env)
        assert code == 0, out[-6000:]
        assert_quiet(out)  # no traceback, no eval-mode warning, …

    # the scorer lands where the GRPO config looks for it (its CSV logger's save_dir and name)
    scorer_run = "runs/reward_model_local/pku_cost"
    panacea_pl(
        "reward_model/pku_local.yaml",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0",
        csv_only,
        f"--trainer.logger.save_dir={Path(scorer_run).parent}",
        f"--trainer.logger.name={Path(scorer_run).name}",
    )
    shipped = yaml.safe_load((EXPERIMENTS / "pku_saferlhf/panacea_grpo_local.yaml").read_text())
    scorer = shipped["model"]["init_args"]["reward"]["init_args"]["scorer"]
    assert scorer == f"{scorer_run}/version_0/scorer"
    assert (tmp_path / scorer / "scorer_config.json").is_file()

    panacea_pl(
        "pku_saferlhf/panacea_grpo_local.yaml",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        csv_only,
        "--trainer.logger.save_dir=runs/pku_saferlhf_local",
        "--trainer.logger.name=panacea_grpo",
        "--model.init_args.group_size=2",
        "--model.init_args.minibatch_size=4",
        "--model.init_args.max_new_tokens=8",
        "--data.init_args.batch_size=2",
    )
    version = tmp_path / "runs/pku_saferlhf_local/panacea_grpo/version_0"
    checkpoint = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2  # 2 iterations × one step over the 4 rows
    trainable = {k for k in checkpoint["state_dict"] if "panacea" in k}
    assert trainable and not any(k.startswith("reward.") for k in checkpoint["state_dict"])
    rows = read_metrics(version)
    for name in ("helpful", "harmless"):
        assert math.isfinite(last_value(rows, f"train/{name}/reward"))
        assert math.isfinite(last_value(rows, f"val/{name}/reward"))
        assert 0.0 <= last_value(rows, f"train/lambda/{name}") <= 1.0
    assert math.isfinite(last_value(rows, "train/kl"))
    assert math.isfinite(last_value(rows, "pareto/hypervolume_final"))
    assert (version / "pareto" / "final.csv").is_file()


# ---- a user's subclasses plug in through class_path -------------------------------------------


class CentreDPO(PanaceaDPO):
    """A user's module: trains at the centre of the simplex instead of sampling λ."""

    def sample_preference(self, batch_size: int) -> torch.Tensor:
        return torch.full((self.num_preferences,), 1.0 / self.num_preferences, device=self.device)


class SquaredScalarization(Aggregator):
    """A user's aggregation scheme: Σ_i λ_i L_i²."""

    def aggregate(self, losses, preference, mask):
        return (preference * losses**2).masked_fill(~mask, 0.0).sum(-1)


@pytest.mark.slow
def test_user_subclasses_plug_in_and_the_resolved_config_is_saved(in_run_dir, shared_data):
    """A user's YAML names their LightningModule subclass by `class_path` and the command line
    swaps the aggregator for their own scheme; nothing in panacea_pl changes."""
    shipped = (EXPERIMENTS / "pku_saferlhf/panacea_dpo_local.yaml").read_text()
    user_yaml = in_run_dir / "my_experiment.yaml"
    user_yaml.write_text(
        shipped.replace(
            "class_path: panacea_pl.modules.PanaceaDPO", f"class_path: {__name__}.CentreDPO"
        )
    )
    cli = fit(
        user_yaml,
        in_run_dir,
        f"--model.init_args.aggregator.class_path={__name__}.SquaredScalarization",
        "--trainer.val_check_interval=null",
        "--trainer.limit_val_batches=0",
    )
    assert type(cli.model) is CentreDPO
    assert type(cli.model.aggregator) is SquaredScalarization
    assert cli.model.loss.beta == 0.1

    version = in_run_dir / "runs/pku_saferlhf_local/panacea_dpo/version_0"
    rows = read_metrics(version)
    assert last_value(rows, "train/lambda/helpful") == pytest.approx(0.5)
    assert last_value(rows, "train/lambda/harmless") == pytest.approx(0.5)

    text = (version / "config.yaml").read_text()
    assert "${" not in text
    saved = yaml.safe_load(text)
    assert saved["model"]["class_path"] == f"{__name__}.CentreDPO"
    assert saved["model"]["init_args"]["aggregator"]["class_path"] == (
        f"{__name__}.SquaredScalarization"
    )
    data = saved["data"]["init_args"]
    assert Path(data["sources"][0]["path"]) == shared_data / (
        "pku-saferlhf-sample-500/PKU-Alignment_PKU-SafeRLHF_sample.jsonl"
    )
    assert (Path(data["tokenizer"]) / "tokenizer_config.json").is_file()
