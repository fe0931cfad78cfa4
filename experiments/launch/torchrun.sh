#!/usr/bin/env bash
# Multi-GPU / multi-node training with torchrun. Run the same command on every node, from the
# repository root, with that node's NODE_RANK; the arguments go to `panacea-pl fit`.
#
#   # one node, every GPU on it
#   experiments/launch/torchrun.sh --config experiments/pku_saferlhf/panacea_dpo_7b.yaml
#   # two nodes of 8 GPUs (16 processes)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node-a experiments/launch/torchrun.sh --config ...   # on node-a
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node-a experiments/launch/torchrun.sh --config ...   # on node-b
#   # CPU, 2 processes (gloo), e.g. to check a config's DDP run on a laptop
#   NPROC_PER_NODE=2 experiments/launch/torchrun.sh --config experiments/stories/panacea_dpo.yaml
#
# Environment (default): NNODES (1), NODE_RANK (0), NPROC_PER_NODE (the GPUs nvidia-smi lists,
# else 1), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500), PYTHON (python), OMP_NUM_THREADS (1).
# Lightning reads torchrun's variables (TorchElasticEnvironment); this script passes the
# matching --trainer.devices / --trainer.num_nodes, and Lightning runs DDP unless the config
# names another strategy (FSDP / DeepSpeed: add --config experiments/strategies/fsdp.yaml, …).
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
if [[ -z ${NPROC_PER_NODE:-} ]]; then
    NPROC_PER_NODE=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
    [[ ${NPROC_PER_NODE} -gt 0 ]] || NPROC_PER_NODE=1
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes "${NNODES}" \
    --node-rank "${NODE_RANK}" \
    --nproc-per-node "${NPROC_PER_NODE}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" \
    --master-port "${MASTER_PORT:-29500}" \
    -m panacea_pl.cli fit "$@" \
    --trainer.devices="${NPROC_PER_NODE}" \
    --trainer.num_nodes="${NNODES}"
