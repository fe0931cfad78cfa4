"""`FSDP2Strategy`: Lightning's ModelParallelStrategy as plain FSDP2 over every process.

    trainer:
      strategy: {class_path: panacea_pl.strategies.FSDP2Strategy}

Lightning's `ModelParallelStrategy` builds a 2-D mesh and by default gives every GPU of a node to
tensor parallelism; Panacea's modules do data parallelism only (their `configure_model` shards
with `fully_shard` over the "data_parallel" dimension), so this subclass fixes the split: every
process is one data-parallel shard, on any number of nodes and GPUs. It also runs on CPU
processes (gloo), which is how the tests exercise it. Checkpoints are one file by default,
gathered on rank zero and filtered to the adapter by the module, like every other strategy's.
"""

from __future__ import annotations

from datetime import timedelta

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism over all processes (no tensor parallelism).

    Args:
        save_distributed_checkpoint: one file per rank (True) or one file gathered on rank zero
            (False, the default: what `panacea-pl fit --ckpt_path` and the adapter exports read).
        process_group_backend: None picks nccl on GPUs and gloo on CPUs.
        timeout: the process group's timeout (a long front sweep may need more than 30 min).
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ):
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
