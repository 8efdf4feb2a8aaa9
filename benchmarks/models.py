"""Attention and recurrent models: the structured route against the dense routes and nngeometry.

Models (stock torch.nn pieces): a TransformerEncoder classifier (token embedding, 2 encoder layers, mean
pooling, linear read-out), a GPT-style causal decoder (token + position embeddings, pre-LayerNorm blocks with
nn.MultiheadAttention under a causal mask, logits at the last position through the tied embedding) and an
LSTM classifier. Each uses the categorical Fisher of cross-entropy. For every route the benchmark reports the
seconds of one ``ng.natural_gradient`` call as a multiple of one gradient measured in the same run, and the
relative difference of the direction from ``natgrad.reference`` (float64 throughout; above d = 3000 parameters
the literal reference is out of reach and the dual route is the baseline). nngeometry (``GramMatrix``, completed with the
same Moore–Penrose solve and one VJP) is run when installed; a model it cannot handle records its error.

Usage:
    python benchmarks/models.py [--quick] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _env import time_call  # noqa: E402

import natgrad as ng  # noqa: E402
from natgrad.models.structured import categorical_fisher_factor  # noqa: E402
from natgrad.report import atomic_write_json, collect_environment  # noqa: E402

REFERENCE_MAX_D = 3000
ROUTES = ["structured", "dual", "krylov"]  # d > r here: primal (d×d) is never the route to take


class EncoderClassifier(nn.Module):
    """Embedding (or float inputs when vocab is 0), nn.TransformerEncoder, mean pooling, a linear read-out."""

    def __init__(self, vocab: int, width: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width) if vocab else nn.Identity()
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(idx)).mean(1))


class Block(nn.Module):
    """Pre-LayerNorm decoder block: causal multi-head self-attention and a GELU MLP, both residual."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = h.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype, device=h.device)
        a = self.norm1(h)
        h = h + self.attn(a, a, a, attn_mask=mask, is_causal=True, need_weights=False)[0]
        return h + self.mlp(self.norm2(h))


class Decoder(nn.Module):
    """GPT-style decoder with tied token embedding, logits of the last position."""

    def __init__(self, vocab: int, width: int, length: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(0.02 * torch.randn(length, width))
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.final = nn.LayerNorm(width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.tokens(idx) + self.positions[: idx.shape[1]])
        return F.linear(self.final(h)[:, -1], self.tokens.weight)


class LstmClassifier(nn.Module):
    """Embedding, a 2-layer LSTM and a linear read-out of the last step."""

    def __init__(self, vocab: int, width: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, num_layers=2, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(idx))[0][:, -1])


def cases(quick: bool) -> dict[str, tuple[nn.Module, torch.Tensor, int]]:
    """name -> (model, token inputs, classes); seeded."""
    vocab, width, length, batch = (16, 8, 6, 6) if quick else (64, 32, 16, 16)
    torch.manual_seed(0)
    idx = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    floats = torch.randn(batch, length, width, generator=torch.Generator().manual_seed(3))
    return {
        "transformer-encoder": (EncoderClassifier(vocab, width, 10), idx, 10),
        "transformer-encoder-float-inputs": (EncoderClassifier(0, width, 10), floats, 10),
        "gpt-decoder": (Decoder(vocab, width, length), idx, vocab),
        "lstm": (LstmClassifier(vocab, width, 10), idx, 10),
    }


def _loss(labels: torch.Tensor):
    return lambda z: F.cross_entropy(z, labels, reduction="sum")


def nngeometry_direction(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """nngeometry's Gram matrix of the factored outputs Bᵀz, then the Moore–Penrose solve and one VJP."""
    from nngeometry import GramMatrix

    logits = model(x)
    factor = categorical_fisher_factor(logits.detach())  # (N, C, k)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=len(x))
    gram = GramMatrix(model, loader, function=lambda a, b: torch.einsum("nck,nc->nk", factor, model(a)))
    n, k = factor.shape[0], factor.shape[2]
    kernel = gram.data.permute(1, 0, 3, 2).reshape(n * k, n * k)
    grad_z = torch.func.grad(_loss(labels))(logits.detach())
    c = torch.linalg.lstsq(factor, grad_z.unsqueeze(-1)).solution.reshape(-1)
    y = torch.linalg.pinv(kernel, hermitian=True) @ c
    cotangent = torch.einsum("nck,nk->nc", factor, y.reshape(n, k))
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(logits, params, cotangent)])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b))


def measure(name: str, model: nn.Module, x: torch.Tensor, classes: int, repeats: int) -> dict:
    labels = torch.randint(0, classes, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    model = model.double().eval()  # float64: the routes' directions are compared, not only timed
    x = x.double() if x.is_floating_point() else x
    phi, params = ng.from_module(model, x)
    metric, loss = ng.metrics.Categorical(), _loss(labels)
    d = ng.num_params(params)
    baseline = "reference" if d <= REFERENCE_MAX_D else "dual"
    if baseline == "reference":
        truth = ng.flatten_params(ng.reference.natural_gradient(phi, params, loss, metric).direction)
    else:  # the literal reference decomposes a d×d matrix: out of reach, the dual route is the baseline
        truth = ng.flatten_params(ng.natural_gradient(phi, params, loss, metric, method="dual").direction)
    grad_time = time_call(lambda: torch.func.grad(lambda p: loss(phi(p)))(params), repeats, warmup=2)[
        "median"
    ]
    row: dict = {"d": d, "N": x.shape[0], "T": x.shape[1], "gradient_s": grad_time, "baseline": baseline}
    for route in ROUTES:
        res = ng.natural_gradient(phi, params, loss, metric, method=route)
        timing = time_call(
            lambda route=route: ng.natural_gradient(phi, params, loss, metric, method=route), repeats
        )
        row[route] = {
            "seconds": timing["median"],
            "gradients": timing["median"] / grad_time,
            "relative_error_vs_baseline": _relative(ng.flatten_params(res.direction), truth),
            "jvp": res.info.get("jvp"),
            "kernel_routes": res.info.get("kernel_routes"),
        }
    try:
        v = nngeometry_direction(model, x, labels)
        timing = time_call(lambda: nngeometry_direction(model, x, labels), repeats)
        row["nngeometry"] = {
            "seconds": timing["median"],
            "gradients": timing["median"] / grad_time,
            "relative_error_vs_baseline": _relative(v, truth),
        }
    except Exception as error:  # a peer that cannot handle the model: record why
        row["nngeometry"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    print(
        f"{name}: d={row['d']}",
        {k: v.get("gradients", v.get("error")) for k, v in row.items() if isinstance(v, dict)},
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller models and batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "environment": collect_environment(),
        "settings": {"quick": args.quick, "repeats": args.repeats, "metric": "categorical Fisher"},
        "cases": {name: measure(name, *case, args.repeats) for name, case in cases(args.quick).items()},
    }
    path = atomic_write_json(args.out / ("models_quick.json" if args.quick else "models.json"), results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
