"""Where NGF and GF send a separable logistic classifier (Depth Without the Magic, §3).

Data: x ~ N(0, I_d), labels of a random teacher, d = 10, n = 8, the first data seed (from ``seed`` on) whose
ℓ2 SVM has fewer support vectors than points (so the SVM differs from the interpolant X⁺y).

* Training-input Fisher, n ≤ d, from w0 = 0 (linear and signed-diagonal depth 2): every margin follows
  ``log(1 + e^{m(t)}) = log(1 + e^{m(0)}) + t``, so the direction tends to ``X⁺y`` — not to the SVM.
* Gradient flow (linear): the direction tends to the SVM (slowly, ~1/log t).
* n > d (training Fisher = Hessian of the logistic loss): NGF is continuous Newton,
  ``∇L(w(t)) = e^{−t} ∇L(w(0))``.
* Population Fisher (x ~ N(0, I), closed form): the direction freezes at an initialisation-dependent,
  non-max-margin direction.

Why it freezes: with ``G = n[a(r)(I − ŵŵᵀ) + b(r)ŵŵᵀ]`` and ``s = −∇L = Σ σ(−m_i) y_i x_i``, NGF gives
``ṙ = ŵᵀs/(n b)`` and ``dŵ/dt = (I − ŵŵᵀ)s/(n a r)``, so ``dŵ/dr = (b/(a r)) (I − ŵŵᵀ)s/ŵᵀs``. For large r,
``b/a ≈ π²/(3r²)`` and ``(I − ŵŵᵀ)s/ŵᵀs = O(1)``: ``dŵ/dr = O(r⁻³)``, a finite total rotation, against
``O(r⁻¹)`` (unbounded, hence the SVM) for gradient flow. Which direction it stops at depends on the start.

"Max-margin" is measured as it is defined: the normalised margin ``min_i y_i x_iᵀŵ`` of the frozen direction
against the SVM's ``1/‖w_svm‖`` (ratio 1 = max-margin). Cosines to the SVM are reported too, but they are the
wrong scale for the claim: near the SVM, 1 − cos is quadratic in the angle θ while the margin loss is linear
(of order θ·max‖x_i‖), so a direction at cosine 0.99 (θ ≈ 8°) can still lose ~10 % of the margin. The population flow runs on to t = 1e32
(cheap in log time) so the margin is read far past the freezing window [1e4, 1e8].
Long horizons are integrated in log time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import natgrad.linear as nl
from natgrad.experiments._base import Claim, Experiment, Progress
from natgrad.experiments._figures import pyplot, save_figure


@dataclass(frozen=True)
class Config:
    seed: int = 0
    d: int = 10
    n: int = 8
    # margins grow like t under training-Fisher NGF; beyond m ≈ 700 the Bernoulli weights σ(m)σ(−m) underflow
    # in float64 and the Fisher degenerates, so this flow stops at t = 300
    ngf_times: tuple[float, ...] = (0.0, 1.0, 10.0, 100.0, 300.0)
    gd_times: tuple[float, ...] = (0.0, 1.0, 1e2, 1e4, 1e6, 1e8)
    newton_n: int = 30
    newton_times: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 6.0)
    population_times: tuple[float, ...] = (0.0, 1.0, 1e2, 1e4, 1e6, 1e8, 1e16, 1e32)
    # the direction must not move over this window (the statement); the margin is read at the end
    freeze_window: tuple[float, float] = (1e4, 1e8)
    population_inits: int = 3
    init_norm: float = 0.5
    rtol: float = 1e-9
    atol: float = 1e-11


def config(quick: bool = False, seed: int = 0) -> Config:
    if quick:
        return Config(seed=seed, ngf_times=(0.0, 1.0, 10.0, 100.0), population_inits=2, rtol=1e-8, atol=1e-10)
    return Config(seed=seed)


def _data(cfg: Config, n: int, need_fewer_support: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    for data_seed in range(cfg.seed, cfg.seed + 1000):
        gen = torch.Generator().manual_seed(data_seed)
        X = nl.gaussian_inputs(n, cfg.d, gen)
        y = nl.teacher_labels(X, torch.randn(cfg.d, generator=gen, dtype=torch.float64))
        if not need_fewer_support or len(nl.svm_l2(X, y).support) < n:
            return X, y, data_seed
    raise RuntimeError("limiting-direction: no data seed with fewer support vectors than points")


def _margin_ratios(X: torch.Tensor, y: torch.Tensor, ws: torch.Tensor, svm_margin: float) -> list[float]:
    # normalised margin over the SVM's (1 = max-margin); nan for w = 0
    return [float(nl.normalised_margin(X, y, w)) / svm_margin if w.norm() > 0 else float("nan") for w in ws]


def _cosines(ws: torch.Tensor, ref: torch.Tensor) -> list[float]:
    # w(0) = 0 has no direction: report nan there
    return [float(nl.cosine(w, ref)) if w.norm() > 0 else float("nan") for w in ws]


def run(cfg: Config, progress: Progress) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    X, y, data_seed = _data(cfg, cfg.n, need_fewer_support=True)
    svm = nl.svm_l2(X, y)
    interpolant = nl.min_norm_interpolant(X, y)
    site = nl.training_fisher(X, y)
    results: dict[str, Any] = {
        "config": cfg.__dict__,
        "data_seed": data_seed,
        "support": svm.support.tolist(),
        "svm": svm.w.tolist(),
        "interpolant": interpolant.tolist(),
        "cos_interpolant_svm": float(nl.cosine(interpolant, svm.w)),
        # the SVM's margins are ≥ 1 with equality on the support, so its normalised margin is 1/‖w_svm‖
        "svm_margin": float(nl.normalised_margin(X, y, svm.w)),
    }
    svm_margin = results["svm_margin"]
    results["interpolant_margin_ratio"] = _margin_ratios(X, y, interpolant[None], svm_margin)[0]
    zero = torch.zeros(cfg.d, dtype=torch.float64)
    ngf = {}
    for name in progress(["linear", "signed-diagonal-2"], description="training-Fisher NGF"):
        model = (
            nl.DepthOne.from_end_to_end(zero)
            if name == "linear"
            else nl.SignedDiagonal.from_end_to_end(zero, 2)
        )
        traj = nl.flow(model, site, cfg.ngf_times, "ngd", log_time=True, rtol=cfg.rtol, atol=cfg.atol)
        m = nl.margins(X, y, traj.w)
        closed = nl.training_fisher_margin(m[0], traj.times[:, None])
        ngf[name] = {
            "w": traj.w.tolist(),
            "margins": m.tolist(),
            "closed_form_margins": closed.tolist(),
            "margin_error": float(((m - closed).abs() / closed.abs().clamp(min=1.0)).max()),
            "margin_spread": float(
                ((m.max(1).values - m.min(1).values) / m.abs().max(1).values.clamp(min=1.0)).max()
            ),
            "cos_interpolant": _cosines(traj.w, interpolant),
            "cos_svm": _cosines(traj.w, svm.w),
        }
    results["ngf_training"] = ngf
    gd = nl.flow(
        nl.DepthOne.from_end_to_end(zero),
        site,
        cfg.gd_times,
        "gd",
        log_time=True,
        rtol=cfg.rtol,
        atol=cfg.atol,
    )
    results["gd"] = {
        "w": gd.w.tolist(),
        "cos_svm": _cosines(gd.w, svm.w),
        "cos_interpolant": _cosines(gd.w, interpolant),
        "margin_ratio": _margin_ratios(X, y, gd.w, svm_margin),
    }
    # n > d: the training Fisher is the Hessian, NGF is continuous Newton: ∇L(w(t)) = e^{-t} ∇L(w(0))
    Xn, yn, _ = _data(cfg, cfg.newton_n, need_fewer_support=False)
    newton_site = nl.training_fisher(Xn, yn)
    loss = nl.training_loss(Xn, yn)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    w0 = cfg.init_norm * torch.randn(cfg.d, generator=gen, dtype=torch.float64) / cfg.d**0.5
    newton = {}
    for name in progress(["linear", "signed-diagonal-2"], description="continuous Newton"):
        model = (
            nl.DepthOne.from_end_to_end(w0) if name == "linear" else nl.SignedDiagonal.from_end_to_end(w0, 2)
        )
        traj = nl.flow(model, newton_site, cfg.newton_times, "ngd", rtol=cfg.rtol, atol=cfg.atol)
        grads = torch.stack([torch.func.grad(loss)(w) for w in traj.w])
        predicted = torch.exp(-traj.times)[:, None] * grads[0]
        newton[name] = {
            "gradient_norm": grads.norm(dim=1).tolist(),
            "relative_error": ((grads - predicted).norm(dim=1) / predicted.norm(dim=1)).tolist(),
        }
    results["newton"] = newton
    # population Fisher: the direction freezes where it is, depending on the start
    pop_site = nl.population_fisher(X, y)
    population = []
    for _ in progress(range(cfg.population_inits), description="population-Fisher NGF"):
        w_init = torch.randn(cfg.d, generator=gen, dtype=torch.float64)
        w_init = cfg.init_norm * w_init / w_init.norm()
        traj = nl.flow(
            nl.DepthOne.from_end_to_end(w_init),
            pop_site,
            cfg.population_times,
            "ngd",
            log_time=True,
            rtol=cfg.rtol,
            atol=cfg.atol,
        )
        directions = traj.w / traj.w.norm(dim=1, keepdim=True)
        start, stop = cfg.freeze_window
        window = [i for i, t in enumerate(cfg.population_times) if start <= t <= stop]
        population.append(
            {
                "w": traj.w.tolist(),
                "norm": traj.w.norm(dim=1).tolist(),
                "cos_svm": _cosines(traj.w, svm.w),
                "margin_ratio": _margin_ratios(X, y, traj.w, svm_margin),
                "late_direction_change": float(
                    max((directions[i] - directions[window[0]]).norm() for i in window)
                ),
                # how far the direction still moves after the window, to the last checkpoint
                "direction_change_after_window": float((directions[-1] - directions[window[-1]]).norm()),
                "final_direction": directions[-1].tolist(),
            }
        )
    finals = torch.tensor([p["final_direction"] for p in population])
    results["population"] = population
    results["population_min_pairwise_distance"] = float(
        min((finals[i] - finals[j]).norm() for i in range(len(finals)) for j in range(i + 1, len(finals)))
    )
    return results


def claims(results: dict[str, Any]) -> list[Claim]:
    ngf = results["ngf_training"]
    gd_cos = results["gd"]["cos_svm"]
    n_points = len(ngf["linear"]["margins"][0])
    population = results["population"]
    start, stop = results["config"]["freeze_window"]
    last = results["config"]["population_times"][-1]
    gd_last = results["config"]["gd_times"][-1]
    return [
        Claim(
            "ngf-training-direction-interpolant",
            "training-Fisher NGF (n ≤ d), linear: final cosine to X⁺y (for deeper nets only the training "
            "outputs are pinned; their off-data drift is reported, not claimed)",
            ngf["linear"]["cos_interpolant"][-1],
            ">",
            0.9999,
        ),
        Claim(
            "ngf-training-margins-closed-form",
            "every margin follows log(1+e^m(t)) = log(1+e^m(0)) + t (max relative error over margins, times, nets)",
            max(v["margin_error"] for v in ngf.values()),
            "<=",
            1e-5,
        ),
        Claim(
            "ngf-training-margins-equal",
            "all margins stay equal (max spread relative to the margin, from w0 = 0)",
            max(v["margin_spread"] for v in ngf.values()),
            "<=",
            1e-5,
        ),
        Claim(
            "ngf-training-not-svm",
            f"with fewer support vectors ({len(results['support'])}) than points ({n_points}) the NGF direction is "
            "not the SVM: final cosine to the SVM",
            max(v["cos_svm"][-1] for v in ngf.values()),
            "<",
            0.99,
        ),
        Claim("gd-to-svm", "gradient flow direction reaches the SVM: final cosine", gd_cos[-1], ">", 0.99),
        Claim(
            "gd-to-svm-rising",
            "the GF cosine to the SVM keeps rising: smallest increase between consecutive checkpoints (t ≥ 1)",
            min(b - a for a, b in zip(gd_cos[1:-1], gd_cos[2:], strict=True)),
            ">",
            0.0,
        ),
        Claim(
            "ngf-continuous-newton",
            "n > d: ∇L(w(t)) = e^{-t}∇L(w(0)) along NGF (max relative error over times and nets)",
            max(max(v["relative_error"]) for v in results["newton"].values()),
            "<=",
            1e-5,
        ),
        Claim(
            "population-direction-freezes",
            "population-Fisher NGF: largest change of the unit direction over t ∈ "
            f"[{start:g}, {stop:g}], over inits (after {stop:g}, to t = {last:g}: "
            f"{_listing(p['direction_change_after_window'] for p in population)})",
            max(p["late_direction_change"] for p in population),
            "<",
            0.01,
        ),
        Claim(
            "population-direction-init-dependent",
            "population-Fisher NGF: smallest distance between final unit directions from different inits",
            results["population_min_pairwise_distance"],
            ">=",
            0.05,
        ),
        Claim(
            "population-direction-not-max-margin",
            "population-Fisher NGF: normalised margin min_i y_i x_iᵀŵ of the frozen direction over the SVM's "
            f"(1 = max-margin) at t = {last:g}, largest over inits (every init: "
            f"{_listing(p['margin_ratio'][-1] for p in population)}; cosines to the SVM: "
            f"{_listing(p['cos_svm'][-1] for p in population)}; GF at t = {gd_last:g}: "
            f"{results['gd']['margin_ratio'][-1]:.4f})",
            max(p["margin_ratio"][-1] for p in population),
            "<",
            0.99,
        ),
    ]


def _listing(values) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def figures(results: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = pyplot()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = results["config"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    t_ngf, t_gd = cfg["ngf_times"][1:], cfg["gd_times"][1:]
    for name, v in results["ngf_training"].items():
        axes[0].semilogx(t_ngf, v["cos_interpolant"][1:], marker="o", label=f"NGF {name}: cos(w, X⁺y)")
        axes[0].semilogx(t_ngf, v["cos_svm"][1:], marker="x", label=f"NGF {name}: cos(w, SVM)")
    axes[0].semilogx(t_gd, results["gd"]["cos_svm"][1:], "k-o", label="GF linear: cos(w, SVM)")
    axes[0].semilogx(t_gd, results["gd"]["cos_interpolant"][1:], "k--x", label="GF linear: cos(w, X⁺y)")
    for k, p in enumerate(results["population"]):
        axes[0].semilogx(
            cfg["population_times"][1:], p["cos_svm"][1:], ":", label=f"population NGF {k}: cos SVM"
        )
    axes[0].set_xlabel("t")
    axes[0].set_ylabel("cosine")
    axes[0].legend(fontsize=6)
    lin = results["ngf_training"]["linear"]
    m = torch.tensor(lin["margins"])
    for i in range(m.shape[1]):
        axes[1].loglog(t_ngf, m[1:, i], "o", markersize=4)
    axes[1].loglog(t_ngf, torch.tensor(lin["closed_form_margins"])[1:, 0], "k-", label="closed form")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("margin y_i x_iᵀw (training-Fisher NGF)")
    axes[1].legend()
    for k, p in enumerate(results["population"]):
        axes[2].semilogx(
            cfg["population_times"][1:], p["margin_ratio"][1:], "o:", label=f"population NGF {k}"
        )
    axes[2].semilogx(t_gd, results["gd"]["margin_ratio"][1:], "k-o", label="GF linear")
    axes[2].axhline(1.0, color="gray", linestyle="--", label="SVM (max-margin)")
    axes[2].axhline(results["interpolant_margin_ratio"], color="gray", linestyle=":", label="X⁺y")
    axes[2].set_ylim(0.5, 1.02)
    axes[2].set_xlabel("t")
    axes[2].set_ylabel("normalised margin min_i y_i x_iᵀŵ / SVM margin")
    axes[2].legend(fontsize=6)
    path = save_figure(fig, out_dir / "limiting_direction.png")
    return [path]


EXPERIMENT = Experiment(
    name="limiting-direction",
    title="Separable logistic data: NGF → X⁺y (training Fisher), GF → SVM, population Fisher freezes",
    config=config,
    run=run,
    claims=claims,
    figures=figures,
    paper="depth",
)
