"""The W&B logger never stops a run: without a login, or with a server that does not answer, it
warns, logs offline, and training goes on (the offline run holds the metrics for `wandb sync`).

No network: the "server" is a closed port on localhost.
"""

from __future__ import annotations

import socket

import pytest
import torch
import wandb
from torch.utils.data import DataLoader

import tiny
from panacea_pl.layers import PanaceaConfig
from panacea_pl.loggers import WandbLogger, find_offline_runs, read_offline_run
from panacea_pl.models import PanaceaPolicy
from panacea_pl.modules import PanaceaDPO


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("failure", "error"), [("no_login", "UsageError"), ("unreachable", "CommError")]
)
def test_wandb_falls_back_to_offline_and_the_run_goes_on(
    failure, error, tiny_llama_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    if failure == "no_login":
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    wandb.teardown()  # wandb reads the environment once per setup: start from a fresh one

    rows, collate = tiny.pair_rows(tiny_llama_dir)
    module = PanaceaDPO(
        PanaceaPolicy(str(tiny_llama_dir), adapter=PanaceaConfig(num_general=2, num_preferences=2))
    )
    logger = WandbLogger(project="panacea-test", save_dir=str(tmp_path))
    trainer = tiny.quiet_trainer(
        max_steps=2,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(rows, batch_size=2, collate_fn=collate)
    try:
        with pytest.warns(UserWarning, match=f"(?s)W&B is unreachable \\({error}.*logging offline"):
            trainer.fit(module, train_dataloaders=loader)
        assert trainer.global_step == 2
        assert logger.experiment.settings.mode == "offline"
    finally:
        wandb.finish()
        wandb.teardown()  # the next test's wandb must not inherit this one's settings
    (run_dir,) = find_offline_runs(tmp_path)
    history = read_offline_run(run_dir).history
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
