#!/usr/bin/env bash
# Multi-node training on SLURM: one task per GPU, Lightning's SLURMEnvironment maps tasks to
# ranks. Submit from the repository root; the arguments go to `panacea-pl fit`.
#
#   mkdir -p runs/slurm
#   sbatch experiments/launch/slurm.sh --config experiments/pku_saferlhf/panacea_dpo_7b.yaml
#   sbatch --nodes=4 experiments/launch/slurm.sh --config ... --config experiments/strategies/fsdp.yaml
#
# Edit the #SBATCH lines for your cluster (partition, account, GPUs per node). Before the time
# limit SLURM sends SIGUSR1; Lightning then saves a checkpoint (atomically, see
# panacea_pl.plugins.AtomicCheckpointIO) and requeues the job, which resumes from it mid-epoch
# with the same data order and λ sequence. Activate the environment with panacea-pl first
# (`source .venv/bin/activate`); sbatch passes it on.
#SBATCH --job-name=panacea
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=runs/slurm/%x-%j.out
set -euo pipefail

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
: "${SLURM_JOB_NUM_NODES:?run this script with sbatch (SLURM_JOB_NUM_NODES is not set)}"
: "${SLURM_NTASKS_PER_NODE:?set --ntasks-per-node (one task per GPU)}"

srun panacea-pl fit "$@" \
    --trainer.num_nodes="${SLURM_JOB_NUM_NODES}" \
    --trainer.devices="${SLURM_NTASKS_PER_NODE}"
