"""Quickstart: the exact natural gradient of a small tanh MLP classifier under the categorical Fisher."""

import torch

import natgrad as ng

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
phi, params = ng.from_module(model, x)  # phi(params) == model(x): logits, shape (10, 3)
loss = lambda z: torch.nn.functional.cross_entropy(z, y)  # noqa: E731
res = ng.natural_gradient(phi, params, loss, metric=ng.metrics.Categorical())
ref = ng.reference.natural_gradient(phi, params, loss, metric=ng.metrics.Categorical())  # float64 pinv
v, v_ref = ng.flatten_params(res.direction), ng.flatten_params(ref.direction)
print(f"natural gradient norm: {v.norm():.6g}   (d = {v.numel()} parameters)")
print(f"pushforward J·v norm:  {res.pushforward.norm():.6g}   rank of G: {res.rank}   method: {res.method}")
print(f"agreement with reference: {float((v - v_ref).norm() / v_ref.norm()):.3e}")
