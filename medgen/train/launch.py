"""How the workflow starts a training job: one process, torchrun on one node, or torchrun agents on
several nodes (kept free of torch imports: the Snakefile reads it)."""

from __future__ import annotations


def torchrun_command(*, python: str, nodes: int, procs_per_node: int, rdzv_id: str, rdzv_port: int = 29400) -> str:
    """The shell prefix that starts ``medgen train`` data-parallel (the workflow's train rule).

    ``python`` is the interpreter that runs the workflow (so no ``medgen`` or ``torchrun`` needs to
    be on PATH, also inside SLURM jobs); torchrun is started as ``python -m torch.distributed.run``.

    * one process: ``medgen train``;
    * one node, several GPUs: ``torchrun --standalone --nproc_per_node G``;
    * several nodes of one SLURM allocation: ``srun`` starts one ``torchrun`` agent per node and
      the agents meet in a c10d rendezvous hosted by the allocation's first node (no separate
      store or fixed master needed; ``rdzv_id`` keeps concurrent jobs apart). Each agent then
      starts ``procs_per_node`` workers; ranks, world size and the master address reach the
      engine through the usual ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` variables.
    """
    if nodes < 1 or procs_per_node < 1:
        raise ValueError(f"train.nodes and processes per node must be >= 1, got {nodes} and {procs_per_node}")
    if nodes == 1:
        if procs_per_node == 1:
            return f"{python} -m medgen.cli train"
        return f"{python} -m torch.distributed.run --standalone --nproc_per_node {procs_per_node} -m medgen.cli train"
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (
        f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 "
        f"{python} -m torch.distributed.run --nnodes {nodes} --nproc_per_node {procs_per_node} --rdzv-backend c10d "
        f"--rdzv-endpoint {head}:{rdzv_port} --rdzv-id {rdzv_id} -m medgen.cli train"
    )
