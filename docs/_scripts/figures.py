"""The figures of the documentation, regenerated from the library and from benchmarks/results/*.json.

Run from the repository root (``make docs-figures``); each figure is a small PNG in docs/figures/. The guides
show the same computations as runnable code; this script only draws them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import natgrad as ng  # noqa: E402
import natgrad.linear as nl  # noqa: E402
from natgrad import diagnostics as dg  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "docs" / "figures"
RESULTS = ROOT / "benchmarks" / "results"
F64 = torch.float64


def save(fig, name: str) -> None:
    fig.tight_layout()
    fig.savefig(FIGURES / name, dpi=90)
    plt.close(fig)
    print("wrote", FIGURES / name)


def fibres() -> None:
    """φ(ξ) = ξ₁ξ₂: the fibres, the Moore–Penrose direction, other generalized inverses, one pushforward."""
    phi = lambda xi: (xi[0] * xi[1]).reshape(1)  # noqa: E731
    loss = lambda z: 0.5 * ((z - 1.5) ** 2).sum()  # noqa: E731
    xi = torch.tensor([0.6, 0.8], dtype=F64)
    mp = ng.natural_gradient(phi, xi, loss)
    kernel = torch.stack([xi[0], -xi[1]]).reshape(2, 1) / xi.norm()  # spans ker J
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [1.4, 1]})
    grid = torch.linspace(0.05, 1.6, 200, dtype=F64)
    a, b = torch.meshgrid(grid, grid, indexing="xy")
    contours = ax.contour(a, b, a * b, levels=[0.12, 0.24, 0.48, 0.8, 1.2, 1.5], colors="0.7", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="z=%.2g")
    for shift, colour in ((-0.6, "tab:orange"), (0.4, "tab:orange"), (0.9, "tab:orange")):
        U = shift * kernel @ torch.ones(1, 2, dtype=F64)
        other = ng.natural_gradient(phi, xi, loss, inverse=ng.GInverse(U=U))
        step = -0.25 * other.direction
        ax.annotate(
            "", xy=(xi + step).tolist(), xytext=xi.tolist(), arrowprops={"arrowstyle": "->", "color": colour}
        )
    step = -0.25 * mp.direction
    line = torch.stack([xi + step + t * kernel[:, 0] for t in (-0.7, 0.7)])
    ax.plot(line[:, 0], line[:, 1], ":", color="tab:orange", lw=1)
    ax.annotate(
        "",
        xy=(xi + step).tolist(),
        xytext=xi.tolist(),
        arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 2},
    )
    ax.plot(*xi.tolist(), "ko")
    ax.set(
        xlabel="ξ₁", ylabel="ξ₂", title="parameters: −v for several G⁻ (blue: Moore–Penrose)", aspect="equal"
    )
    ax.title.set_fontsize(9)
    z0 = float(mp.output)
    bx.axhline(0, color="0.6")
    bx.plot([z0], [0], "ko")
    bx.annotate(
        "",
        xy=(z0 - 0.25 * float(mp.pushforward), 0),
        xytext=(z0, 0),
        arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 2},
    )
    bx.plot([1.5], [0], "g*", markersize=12)
    bx.set(xlim=(0, 2), ylim=(-1, 1), yticks=[], xlabel="z = ξ₁ξ₂", title="the model: every −J v is the same")
    bx.title.set_fontsize(9)
    save(fig, "concepts_fibres.png")


def cutoff() -> None:
    """Rank and pushforward error against the Moore–Penrose cutoff, near a rank drop."""
    phi = lambda xi: torch.stack([xi[0] * xi[1], xi[0] * xi[2]])  # noqa: E731
    loss = lambda z: 0.5 * ((z - torch.tensor([1.0, -0.5], dtype=F64)) ** 2).sum()  # noqa: E731
    rtols = [10.0**k for k in range(-16, 0)]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for xi1, style in ((1e-2, "-o"), (1e-5, "-s")):
        xi = torch.tensor([xi1, 0.8, -0.6], dtype=F64)
        rep = dg.cutoff_sensitivity(phi, xi, loss, rtols, method="lstsq")
        errors = [max(e, 1e-17) for e in rep.pushforward_errors]
        ax.loglog(
            rtols,
            errors,
            style,
            label=f"ξ₁ = {xi1:g} (σ₂/σ₁ = {rep.singular_values[-1] / rep.singular_values[0]:.0e})",
            ms=4,
        )
    ax.axvline(ng.default_rtol(F64, 2, 3), color="0.5", ls="--", lw=0.8)
    ax.text(ng.default_rtol(F64, 2, 3) * 1.5, 1e-6, "default rtol", fontsize=8, color="0.4")
    ax.set(
        xlabel="rtol (cutoff λ ≤ rtol·λ_max)", ylabel="pushforward error", title="the cutoff decides the rank"
    )
    ax.legend(fontsize=8)
    save(fig, "concepts_cutoff.png")


def damping() -> None:
    """Damping's bias: ‖J v_λ − J v⁺‖ and ‖v_λ − v⁺‖ grow like λ."""
    torch.manual_seed(0)
    W = torch.randn(3, 6, dtype=F64)
    phi = lambda xi: torch.tanh(W @ xi[:6]) * xi[6:9]  # noqa: E731
    loss = lambda z: 0.5 * ((z - 0.3) ** 2).sum()  # noqa: E731
    xi = torch.randn(9, dtype=F64)
    lams = [10.0**k for k in range(-8, 0)]
    rep = dg.damping_bias(phi, xi, loss, lams)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.loglog(lams, rep.pushforward_bias, "-o", ms=4, label="‖J v_λ − J v⁺‖ / ‖J v⁺‖")
    ax.loglog(lams, rep.direction_bias, "-s", ms=4, label="‖v_λ − v⁺‖ / ‖v⁺‖")
    ax.set(xlabel="damping λ", ylabel="relative bias", title=f"(G + λI)⁻¹ is biased: slope {rep.slope:.2f}")
    ax.legend(fontsize=8)
    save(fig, "concepts_damping.png")


def crossover() -> None:
    """CPU cost of each route (in gradients) against r, one panel per model and width, auto's pick marked."""
    data = json.loads((RESULTS / "crossover.json").read_text())
    rows = data["rows"]
    routes = ("primal", "dual", "structured", "structured-krylov", "krylov")
    panels = sorted({(r["model"], r["width"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 3.2), sharey=True, squeeze=False)
    for ax, (model, width) in zip(axes[0], panels, strict=True):
        sub = sorted((r for r in rows if (r["model"], r["width"]) == (model, width)), key=lambda r: r["r"])
        x = [r["r"] for r in sub]
        for index, route in enumerate(routes):  # a fixed colour per route, whatever a panel misses
            y = [r[route].get("gradients", math.nan) for r in sub]
            ax.loglog(x, y, "-o", ms=3, label=route, color=f"C{index}")
        picks = [r[r["auto_pick"]].get("gradients", math.nan) for r in sub]
        ax.loglog(x, picks, "k*", ms=8, label="auto's pick", ls="none")
        ax.set(xlabel="r", title=f"{model} {width} (d = {sub[0]['d']})")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # decades only: minor labels collide
        ax.title.set_fontsize(8)
    axes[0][0].set_ylabel("CPU cost (one gradient = 1)")
    axes[0][-1].legend(fontsize=6)
    save(fig, "routes_crossover.png")


def charts() -> None:
    """Softmax + KL in two charts: natural gradient model trajectories coincide, gradient descent's do not."""
    q = torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    kl = lambda p: (q * (q.log() - p.log())).sum()  # noqa: E731
    charts = {"ξ": lambda x: x, "η (ξ = η³/3 + η)": lambda e: e**3 / 3 + e}
    start = torch.tensor([-1.0, 0.2, 1.2], dtype=F64)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharex=True, sharey=True)
    for ax, natural in zip(axes, (True, False), strict=True):
        for (label, f), style in zip(charts.items(), ("-", "--"), strict=True):
            phi = lambda e, f=f: torch.softmax(f(e), 0)  # noqa: E731
            eta = start.clone() if label == "ξ" else _solve_cubic(start)
            points = []
            for _ in range(60):
                p = phi(eta)
                points.append(p.detach())
                if natural:
                    res = ng.natural_gradient(phi, eta, kl, metric=ng.metrics.FisherRao())
                    eta = eta - 0.1 * res.direction
                else:
                    eta = eta - 0.3 * torch.func.grad(lambda e, phi=phi: kl(phi(e)))(eta)
            traj = torch.stack(points)
            ax.plot(traj[:, 0], traj[:, 1], style, label=label)
        ax.plot(q[0], q[1], "g*", ms=10)
        ax.set(xlabel="p₁", title="natural gradient" if natural else "gradient descent")
    axes[0].set_ylabel("p₂")
    axes[0].legend(fontsize=8)
    save(fig, "invariance_charts.png")


def _solve_cubic(xi: torch.Tensor) -> torch.Tensor:
    eta = xi.clone()
    for _ in range(50):  # Newton on η³/3 + η = ξ (monotone)
        eta = eta - (eta**3 / 3 + eta - xi) / (eta**2 + 1)
    return eta


def depth() -> None:
    """Sparse separable data: GD's solution depends on depth, NGD's training margins do not."""
    gen = torch.Generator().manual_seed(1)
    X = nl.gaussian_inputs(12, 30, gen)
    y = nl.teacher_labels(X, nl.sparse_teacher(30, 3))
    w0 = 1e-3 * torch.randn(30, generator=gen, dtype=F64)
    site = nl.training_fisher(X, y)
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for depth_ in (1, 2, 3):
        net = (
            nl.DepthOne.from_end_to_end(w0)
            if depth_ == 1
            else nl.SignedDiagonal.from_end_to_end(w0, depth_, scale=0.1)
        )
        style = ("-", "--", ":")[depth_ - 1]
        steps = list(range(0, 2001, 50))
        gd = nl.descend(net, site, 0.1, steps[-1], "gd", record=steps)
        axes[0].plot(steps, [float(w.abs().sum() / w.norm()) for w in gd.w], style, label=f"depth {depth_}")
        steps = list(range(0, 101, 5))
        # NGD from the same w0 with a moderate α: discrete steps from a tiny α are explosive in deep nets
        net = (
            nl.DepthOne.from_end_to_end(w0)
            if depth_ == 1
            else nl.SignedDiagonal.from_end_to_end(w0, depth_, scale=1.0)
        )
        ngd = nl.descend(net, site, 0.05, steps[-1], "ngd", record=steps)
        axes[1].plot(
            steps, [float(nl.margins(X, y, w).mean()) for w in ngd.w], style, label=f"depth {depth_}"
        )
    axes[0].set(xlabel="step", ylabel="‖w‖₁ / ‖w‖₂ (smaller: sparser)", title="GD: depth makes w sparse")
    axes[1].set(
        xlabel="step", ylabel="mean training margin", title="NGD: the same training margins at every depth"
    )
    for ax in axes:
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    save(fig, "depth_margins.png")


def training() -> None:
    """Full-batch training loss per step: NGD against SGD and Adam on the same small classifier."""
    from natgrad.optim import NGD, CrossEntropy

    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name in ("NGD", "SGD", "Adam"):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        losses = []
        if name == "NGD":
            opt = NGD(model.parameters(), lr=1.0, damping=1e-3, line_search="grid")
            f = opt.functional(model)
            for _ in range(60):
                losses.append(float(opt.step(lambda p, f=f: f(p, x), CrossEntropy(y))))
        else:
            opt = (
                torch.optim.SGD(model.parameters(), lr=0.5)
                if name == "SGD"
                else torch.optim.Adam(model.parameters(), lr=0.05)
            )
            for _ in range(60):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        ax.semilogy(losses, label=name)
    ax.set(
        xlabel="step (full batch)",
        ylabel="training loss",
        title="64 points, XOR-like labels, tanh MLP 2-16-2",
    )
    ax.legend(fontsize=8)
    save(fig, "training_loss.png")


def peers() -> None:
    """Structured route and peers against width and batch size (cost in gradients)."""
    data = json.loads((RESULTS / "structured_vs_peers.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, axis in zip(axes, ("scaling_width", "scaling_batch"), ("width", "batch"), strict=True):
        rows = data[key]
        methods = [k for k, v in rows[0].items() if isinstance(v, dict) and "gradients" in v]
        for method in methods:
            ax.loglog(
                [r[axis] for r in rows],
                [r[method]["gradients"] if method in r else math.nan for r in rows],
                "-o",
                ms=3,
                label=method,
            )
        ax.set(xlabel=axis, title=f"MLP, sweep over {axis}")
    axes[0].set_ylabel("cost (one gradient = 1)")
    axes[0].legend(fontsize=7)
    save(fig, "bench_peers_scaling.png")


if __name__ == "__main__":
    FIGURES.mkdir(parents=True, exist_ok=True)
    for make in (fibres, cutoff, damping, crossover, charts, depth, training, peers):
        make()
