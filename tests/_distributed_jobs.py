"""Jobs the distributed tests run on every rank of a local gloo group (imported by the spawned processes).

Each job builds the whole batch deterministically, takes this rank's shard (uneven sizes), calls
``natgrad.distributed.natural_gradient`` and returns plain tensors; rank 0 also returns the single-process
engine's answer on the concatenated batch, with the block-diagonal metric and the summed loss.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import natgrad as ng
import natgrad.distributed as ngd
from cases import inverses

SHARDS = {1: [5], 2: [2, 5], 3: [1, 2, 4]}  # uneven; 7 examples in total for 2 and 3 ranks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Model:
    """A module and a batch: ``make()`` -> module, ``inputs(N)`` -> the whole batch (the same on every rank)."""

    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[int], Tensor]
    probabilities: bool = False


class Embedder(nn.Module):
    """Token pairs -> embeddings (5 × 2) -> concatenated -> logits: d = 10 + 15 = 25 (r = 3N can exceed d)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.embed(tokens).flatten(1))


class SoftmaxMLP(nn.Module):
    """An MLP whose outputs are probabilities (for the Fisher–Rao metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.body(x), dim=-1)


MODELS = {
    "mlp": Model(
        "mlp",
        lambda: nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 3)),
        lambda n: torch.randn(n, 3, generator=_gen(1)),
    ),
    "cnn": Model(
        "cnn",
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3)),
        lambda n: torch.randn(n, 1, 4, 4, generator=_gen(2)),
    ),
    "embedding": Model("embedding", Embedder, lambda n: torch.randint(0, 5, (n, 2), generator=_gen(3))),
    "softmax-mlp": Model("softmax-mlp", SoftmaxMLP, lambda n: torch.randn(n, 3, generator=_gen(4)), True),
}


def build(model: Model, sizes: list[int], dtype: torch.dtype = torch.float64):
    """(module, whole batch, shard slices) — identical on every rank."""
    torch.manual_seed(0)
    module = model.make().to(dtype)
    x = model.inputs(sum(sizes))
    x = x.to(dtype) if x.is_floating_point() else x
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    return module, x, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# Metric specs: shard(z_p, p) -> (metric on the shard, loss term); whole(parts) -> (metric, loss) on the
# concatenated batch. Targets and metric blocks are seeded by shard index so both sides see the same ones.
def _targets(z: Tensor, p: int) -> Tensor:
    return torch.randn(z.shape, generator=_gen(100 + p)).to(z.dtype)


def _smooth(z: Tensor, p: int) -> Callable[[Tensor], Tensor]:
    y = _targets(z, p)
    return lambda out: torch.log(torch.cosh(out - y)).sum() + 0.1 * (out**3).sum()


def _gaussian(z, p):
    var = (0.5 + torch.rand(z.shape, generator=_gen(200 + p))).to(z.dtype)
    y = _targets(z, p)
    return ng.metrics.Gaussian(var), lambda out: (((out - y) ** 2) / (2 * var)).sum(), var


def _bernoulli_targets(z, p):
    return (torch.rand(z.shape, generator=_gen(300 + p)) > 0.5).to(z.dtype)


def _labels(z, p):
    return torch.randint(0, z.shape[-1], (z.shape[0],), generator=_gen(400 + p))


def _dense_block(z, p):
    n = z.numel()
    b = torch.randn(n, max(1, n - 1), generator=_gen(500 + p)).to(z.dtype)
    return b @ b.T


def _factor_block(z, p):
    n = z.numel()
    return torch.randn(n, n + 1, generator=_gen(600 + p)).to(z.dtype)


def _point_fn(p: int, n: int, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    w = torch.randn(n, 2, generator=_gen(700 + p)).to(dtype)

    def fn(out: Tensor) -> Tensor:
        flat = out.reshape(-1)
        return torch.diag(1.0 + flat**2) + w @ w.T * torch.tanh(flat).sum() ** 2

    return fn


def _fisher_rao_loss(z, p):
    q = torch.softmax(torch.randn(z.shape, generator=_gen(800 + p)).to(z.dtype), dim=-1)
    return lambda out: (q * (q.log() - out.log())).sum()


def shard_metric(name: str, z: Tensor, p: int):
    """This shard's metric and loss term for metric ``name``."""
    if name == "euclidean":
        return ng.metrics.Euclidean(), _smooth(z, p)
    if name == "gaussian":
        metric, loss, _ = _gaussian(z, p)
        return metric, loss
    if name == "bernoulli":
        y = _bernoulli_targets(z, p)
        return ng.metrics.Bernoulli(), lambda out: F.binary_cross_entropy_with_logits(out, y, reduction="sum")
    if name == "categorical":
        y = _labels(z, p)
        return ng.metrics.Categorical(), lambda out: F.cross_entropy(out, y, reduction="sum")
    if name == "dense-singular":
        return ng.metrics.Dense(_dense_block(z, p)), _smooth(z, p)
    if name == "factor":
        return ng.metrics.Factor(_factor_block(z, p)), _smooth(z, p)
    if name == "point-dependent":
        return ng.metrics.PointDependent(_point_fn(p, z.numel(), z.dtype)), _smooth(z, p)
    if name == "fisher-rao":
        return ng.metrics.FisherRao(), _fisher_rao_loss(z, p)
    raise KeyError(name)


def whole_metric(name: str, parts: list[Tensor]):
    """The concatenated batch's metric (block diagonal over shards) and loss (sum of the shards' terms)."""
    sizes = [part.shape[0] for part in parts]
    losses = [shard_metric(name, part, p)[1] for p, part in enumerate(parts)]

    def loss(out: Tensor) -> Tensor:
        return sum(term(piece) for term, piece in zip(losses, out.split(sizes), strict=True))

    z = torch.cat(parts)
    if name in ("euclidean", "bernoulli", "categorical", "fisher-rao"):
        return shard_metric(name, z, 0)[0], loss
    if name == "gaussian":
        return ng.metrics.Gaussian(torch.cat([_gaussian(part, p)[2] for p, part in enumerate(parts)])), loss
    if name == "dense-singular":
        return ng.metrics.Dense(torch.block_diag(*[_dense_block(q, p) for p, q in enumerate(parts)])), loss
    if name == "factor":
        return ng.metrics.Factor(torch.block_diag(*[_factor_block(q, p) for p, q in enumerate(parts)])), loss
    if name == "point-dependent":
        fns = [_point_fn(p, q.numel(), q.dtype) for p, q in enumerate(parts)]

        def fn(out: Tensor) -> Tensor:
            pieces = out.split(sizes)
            return torch.block_diag(*[f(piece) for f, piece in zip(fns, pieces, strict=True)])

        return ng.metrics.PointDependent(fn), loss
    raise KeyError(name)


LOGIT_METRICS = [
    "euclidean",
    "gaussian",
    "bernoulli",
    "categorical",
    "dense-singular",
    "factor",
    "point-dependent",
]
INVERSES = ["moore-penrose", "ginverse", "minnorm-diag", "minnorm-dense", "damped"]
STRATEGIES = ["kernel", "matrix-free"]


# World sizes 1 and 2 run the whole product (model × metric × inverse) between them; world size 3, where
# every collective costs most on a shared machine, runs every metric and every inverse across the models.
FULL_MODELS = {1: ("cnn", "embedding"), 2: ("mlp",)}
THREE_RANKS = [
    ("mlp", "euclidean", "ginverse"),
    ("mlp", "categorical", "moore-penrose"),
    ("cnn", "gaussian", "minnorm-diag"),
    ("cnn", "bernoulli", "damped"),
    ("embedding", "dense-singular", "minnorm-dense"),
    ("embedding", "factor", "moore-penrose"),
    ("mlp", "point-dependent", "damped"),
    ("softmax-mlp", "fisher-rao", "ginverse"),
]


def plan(world_size: int) -> list[tuple[str, str, str]]:
    """(model, metric, inverse) triples for a world size (see ``FULL_MODELS``)."""
    if world_size not in FULL_MODELS:
        return THREE_RANKS
    triples = [(m, me, i) for m in FULL_MODELS[world_size] for me in LOGIT_METRICS for i in INVERSES]
    if world_size == 2:
        triples += [("softmax-mlp", "fisher-rao", inverse) for inverse in INVERSES]
    return triples


def _flat(params) -> Tensor:
    return ng.flatten_params(params).detach().clone()


def agreement_job(rank: int, world_size: int, tol: float) -> dict:
    """Distributed answers for every planned case and strategy; rank 0 adds the single-process ones."""
    sizes = SHARDS[world_size]
    out: dict = {"sizes": sizes, "cases": {}}
    for model_name, metric_name, inverse_name in plan(world_size):
        module, x, slices = build(MODELS[model_name], sizes)
        phi, params = ng.from_module(module, x[slices[rank]])
        z = phi(params).detach()
        metric, loss = shard_metric(metric_name, z, rank)
        inverse = inverses(ng.num_params(params), torch.float64)[inverse_name]
        entry: dict = {}
        for strategy in STRATEGIES:
            try:
                res = ngd.natural_gradient(phi, params, loss, metric, inverse, strategy=strategy, tol=tol)
            except Exception as exc:
                raise RuntimeError(f"{model_name}/{metric_name}/{inverse_name}/{strategy}: {exc}") from exc
            entry[strategy] = {
                "v": _flat(res.direction),
                "pushforward": res.pushforward.detach().reshape(-1).clone(),
                "gradient": _flat(res.gradient),
                "loss": float(res.loss),
                "rank": res.rank,
                "strategy": res.strategy,
                "certificate": res.certificate,
            }
        if rank == 0:
            phi_all, params_all = ng.from_module(module, x)
            parts = [phi_all(params_all).detach()[s] for s in slices]
            metric_all, loss_all = whole_metric(metric_name, parts)
            ref = ng.natural_gradient(phi_all, params_all, loss_all, metric_all, inverse)
            entry["single"] = {
                "v": _flat(ref.direction),
                "pushforward": ref.pushforward.detach().reshape(-1).clone(),
                "gradient": _flat(ref.gradient),
                "loss": float(ref.loss),
                "rank": ref.rank,
                "method": ref.method,
            }
        out["cases"][(model_name, metric_name, inverse_name)] = entry
    out["mean"] = mean_reduction_job(rank, world_size)
    out["float32"] = float32_job(rank, world_size)
    return out


def float32_job(rank: int, world_size: int) -> dict:
    """Both strategies in float32 (damped, well conditioned) against the float64 engine."""
    sizes = SHARDS[world_size]
    out: dict = {}
    for strategy in STRATEGIES:
        module, x, slices = build(MODELS["mlp"], sizes, torch.float32)
        phi, params = ng.from_module(module, x[slices[rank]])
        metric, loss = shard_metric("categorical", phi(params).detach(), rank)
        res = ngd.natural_gradient(phi, params, loss, metric, ng.Damped(0.1), strategy=strategy)
        out[strategy] = _flat(res.direction)
    if rank == 0:
        module, x, slices = build(MODELS["mlp"], sizes)
        phi_all, params_all = ng.from_module(module, x)
        parts = [phi_all(params_all).detach()[s] for s in slices]
        metric_all, loss_all = whole_metric("categorical", parts)
        out["single64"] = _flat(
            ng.natural_gradient(phi_all, params_all, loss_all, metric_all, ng.Damped(0.1)).direction
        )
    return out


def mean_reduction_job(rank: int, world_size: int) -> dict:
    """reduction="mean": each rank's loss is its shard's mean cross-entropy; the answer is the batch mean's."""
    sizes = SHARDS[world_size]
    module, x, slices = build(MODELS["mlp"], sizes)
    labels = torch.randint(0, 3, (sum(sizes),), generator=_gen(9))
    phi, params = ng.from_module(module, x[slices[rank]])
    y = labels[slices[rank]]
    res = ngd.natural_gradient(
        phi, params, lambda out: F.cross_entropy(out, y), ng.metrics.Categorical(), reduction="mean"
    )
    out = {"v": _flat(res.direction), "loss": float(res.loss)}
    if rank == 0:
        phi_all, params_all = ng.from_module(module, x)
        ref = ng.natural_gradient(
            phi_all, params_all, lambda o: F.cross_entropy(o, labels), ng.metrics.Categorical()
        )
        out["single"] = {"v": _flat(ref.direction), "loss": float(ref.loss)}
    return out


def _mlp_shard(rank: int, world_size: int):
    module, x, slices = build(MODELS["mlp"], SHARDS[world_size])
    phi, params = ng.from_module(module, x[slices[rank]])
    return phi, params


FAILURES = [
    "nonfinite-loss",
    "bad-metric",
    "different-params",
    "bad-strategy",
    "empty-shard",
    "bad-loss-shape",
    "fails-mid-solve",
]


def _bad_call(rank: int, world_size: int, kind: str) -> dict:
    """The last rank gets bad input of the given kind; the others call correctly."""
    module, x, slices = build(MODELS["mlp"], SHARDS[world_size])
    bad = rank == world_size - 1
    inputs = x[slices[rank]]
    if bad and kind == "empty-shard":
        inputs = x[:0]
    phi, params = ng.from_module(module, inputs)
    loss: Callable[[Tensor], Tensor] = lambda out: (out**2).sum()  # noqa: E731
    metric: ng.metrics.Metric = ng.metrics.Euclidean()
    options: dict = {}
    if bad and kind == "nonfinite-loss":
        loss = lambda out: (out**2).sum() * float("nan")  # noqa: E731
    if bad and kind == "bad-loss-shape":
        loss = lambda out: out**2  # noqa: E731
    if bad and kind == "bad-metric":
        metric = ng.metrics.Dense(torch.eye(3, dtype=torch.float64))  # 3 × 3 for a shard of 3·N_p outputs
    if bad and kind == "different-params":
        params = {k: v + 1e-3 for k, v in params.items()}
    if bad and kind == "bad-strategy":
        options["strategy"] = "dense"
    if kind == "fails-mid-solve":  # phi's third call is the first Krylov product (after the VJP and a probe)
        options["strategy"] = "matrix-free"
        if bad:
            phi = _failing_after(phi, calls=2)
    try:
        ngd.natural_gradient(phi, params, loss, metric, **options)
    except ngd.DistributedError as exc:
        return {"error": type(exc).__name__, "message": str(exc), "failed_ranks": exc.failed_ranks}
    return {"error": None}


def _failing_after(phi: Callable, calls: int) -> Callable:
    count = [0]

    def failing(params):
        count[0] += 1
        if count[0] > calls:
            raise RuntimeError("the model failed on this shard")
        return phi(params)

    return failing


def failure_job(rank: int, world_size: int) -> dict:
    """Every kind of bad input in turn, then a good call: the group must survive each failure."""
    out = {kind: _bad_call(rank, world_size, kind) for kind in FAILURES}
    phi, params = _mlp_shard(rank, world_size)
    try:
        ngd.natural_gradient(phi, params, lambda o: (o**2).sum(), strategy="matrix-free", max_iter=2)
    except ng.ConvergenceError as exc:
        certificate = exc.result.certificate
        out["convergence"] = {
            "message": str(exc),
            "iterations": certificate.iterations,
            "status": exc.result.status,
        }
    res = ngd.natural_gradient(phi, params, lambda o: (o**2).sum())
    out["after"] = _flat(res.direction)
    return out


def dead_rank_job(rank: int, world_size: int) -> dict:
    """The last rank exits before the call; the others must fail within the process group's timeout."""
    phi, params = _mlp_shard(rank, world_size)
    if rank == world_size - 1:
        os._exit(3)
    start = time.monotonic()
    try:
        ngd.natural_gradient(phi, params, lambda out: (out**2).sum())
    except Exception as exc:  # noqa: BLE001 -- gloo raises RuntimeError or DistBackendError
        return {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - start}
    return {"error": None}


def _mlp_batch(world_size: int):
    module, x, slices = build(MODELS["mlp"], SHARDS[world_size])
    labels = torch.randint(0, 3, (x.shape[0],), generator=_gen(21))
    return module, x, labels, slices


def _flat_module(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def _trajectory(opt, module, forward_input, loss, steps: int) -> list[Tensor]:
    f = opt.functional(module)
    points = []
    for _ in range(steps):
        opt.step(lambda p: f(p, forward_input), loss)
        points.append(_flat_module(module))
    return points


def ngd_job(rank: int, world_size: int, checkpoint: str) -> dict:
    """The NGD hook: the distributed factorize against ng.factorize, and 20 distributed steps against the
    one-process trajectory, identical ranks, resume from rank 0."""
    from natgrad.optim import NGD as LocalNGD
    from natgrad.optim import CrossEntropy

    module, x, labels, slices = _mlp_batch(world_size)
    shard = slices[rank]
    phi, params = ng.from_module(module, x[shard])
    loss = CrossEntropy(labels[shard], reduction="sum")
    out: dict = {"factorize": {}}
    fac = ngd.DistributedFactorize()(phi, params, ng.metrics.Categorical(), ng.MoorePenrose(), "auto")
    answers = {"moore-penrose": fac.solve(loss), "damped": fac.solve(loss, inverse=ng.Damped(0.3))}
    if rank == 0:
        phi_all, params_all = ng.from_module(module, x)
        single = ng.factorize(phi_all, params_all, ng.metrics.Categorical(), ng.MoorePenrose())
        loss_all = CrossEntropy(labels, reduction="sum")
        expected = {
            "moore-penrose": single.solve(loss_all),
            "damped": single.solve(loss_all, inverse=ng.Damped(0.3)),
        }
        for key, res in answers.items():
            out["factorize"][key] = (_flat(res.direction), _flat(expected[key].direction))
    settings = {"lr": 0.5, "damping": 1e-2}
    steps = 20
    out["ddp"] = _ddp_refusal(module)
    start = _flat_module(module)
    opt = ngd.NGD(module.parameters(), **settings)
    out["distributed"] = _trajectory(opt, module, x[shard], loss, steps // 2)
    if rank == 0:
        torch.save({"model": module.state_dict(), "optimizer": opt.state_dict()}, checkpoint)
    torch.distributed.barrier()
    out["distributed"] += _trajectory(opt, module, x[shard], loss, steps // 2)
    saved = torch.load(checkpoint, weights_only=False)  # every rank resumes from rank 0's checkpoint
    resumed_module, _, _, _ = _mlp_batch(world_size)
    resumed_module.load_state_dict(saved["model"])
    resumed = ngd.NGD(resumed_module.parameters(), **settings)
    resumed.load_state_dict(saved["optimizer"])
    out["resumed"] = _trajectory(resumed, resumed_module, x[shard], loss, steps // 2)
    if rank == 0:
        single_module, _, _, _ = _mlp_batch(world_size)
        assert torch.equal(_flat_module(single_module), start)
        local = LocalNGD(single_module.parameters(), safeguard=False, **settings)
        out["single"] = _trajectory(local, single_module, x, CrossEntropy(labels, reduction="sum"), steps)
    return out


def _ddp_refusal(module: nn.Module) -> str:
    ddp = nn.parallel.DistributedDataParallel(module)
    try:
        ngd.NGD(ddp.parameters()).functional(ddp)
    except ng.InvalidTypeError as exc:
        return str(exc)
    return ""
