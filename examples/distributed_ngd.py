"""Exact natural gradient descent on a batch sharded over processes.

    torchrun --nproc_per_node 2 examples/distributed_ngd.py
    python examples/distributed_ngd.py              # the same as a group of one process

Every rank holds the same MLP and its own (uneven) shard of the batch; each step computes the exact natural
gradient of the whole batch with ``natgrad.distributed.natural_gradient`` and applies it on every rank, so the
parameters stay identical. CPU processes talk over gloo; with one GPU per process (``torch.cuda`` available)
the script uses NCCL. At the end rank 0 checks the distributed direction against ``natgrad.natural_gradient``
on the concatenated batch in one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import natgrad as ng
import natgrad.distributed as ngd

STEPS = 8
LR = 0.5
DAMPING = 1.0
BATCH = 60


def shard_bounds(rank: int, world_size: int, total: int) -> tuple[int, int]:
    """Rank p gets a share proportional to p + 1 (uneven on purpose)."""
    weights = [p + 1 for p in range(world_size)]
    edges = [round(total * sum(weights[:p]) / sum(weights)) for p in range(world_size + 1)]
    return edges[rank], edges[rank + 1]


def main() -> None:
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:  # started by torchrun: it sets the rank, world size and rendezvous address
        dist.init_process_group(backend)
    else:  # plain `python examples/distributed_ngd.py`: a group of one process
        dist.init_process_group(backend, init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dtype = torch.float64

    torch.manual_seed(0)  # the same initial parameters on every rank
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3)).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)  # the whole batch, identical everywhere (for the final check)
    x = torch.randn(BATCH, 4, generator=gen, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    lo, hi = shard_bounds(rank, world_size, BATCH)
    x_shard, y_shard = x[lo:hi].to(device), y[lo:hi].to(device)
    metric = ng.metrics.Categorical()

    def shard_loss(z: torch.Tensor) -> torch.Tensor:  # this rank's term of the global loss (a sum over ranks)
        return F.cross_entropy(z, y_shard, reduction="sum")

    for step in range(STEPS):
        phi, params = ng.from_module(model, x_shard)
        res = ngd.natural_gradient(phi, params, shard_loss, metric, ng.Damped(DAMPING))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.sub_(LR * res.direction[name])
        if rank == 0:
            sent = res.communication["total_payload_bytes"]
            print(
                f"step {step}: mean cross-entropy {float(res.loss) / BATCH:.6f}  strategy {res.strategy}  "
                f"bytes handed to collectives {sent}"
            )

    # Identical parameters on every rank: compare each rank's flat vector with rank 0's.
    flat = ng.flatten_params({k: v.detach() for k, v in model.named_parameters()})
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([float(torch.equal(flat, reference))], device=device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)

    phi, params = ng.from_module(model, x_shard)
    inverse = ng.Damped(DAMPING)
    kernel = ngd.natural_gradient(phi, params, shard_loss, metric, inverse, strategy="kernel")
    free = ngd.natural_gradient(phi, params, shard_loss, metric, inverse, strategy="matrix-free")
    if rank == 0:
        phi_all, params_all = ng.from_module(model, x.to(device))
        y_all = y.to(device)
        single = ng.natural_gradient(
            phi_all, params_all, lambda z: F.cross_entropy(z, y_all, reduction="sum"), metric, inverse
        )
        v_single = ng.flatten_params(single.direction)
        for res in (kernel, free):
            diff = ng.flatten_params(res.direction) - v_single
            err = torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(v_single)
            print(f"{res.strategy}: agreement with the single-process engine: {float(err):.3e}")
        print(
            f"shard sizes: {kernel.shard_examples}; rank of G: {kernel.rank} (single process: {single.rank})"
        )
        print(f"matrix-free certificate: {free.certificate}")
        print(f"parameters identical on every rank: {bool(same.item())}")
    # Rank 0 checked against one process while the others waited; shutdown is a barrier and the teardown.
    ngd.shutdown()


if __name__ == "__main__":
    main()
