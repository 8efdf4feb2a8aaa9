"""Adapting ``nn.Module`` to a functional parametrisation ξ ↦ φ(ξ).

φ substitutes the parameter tensors into the module's own parameter slots for the duration of one call and
restores the original ``Parameter`` objects afterwards. Each slot is visited once even when one module
instance appears several times in the model (``torch.func.functional_call`` swaps such a slot twice and
leaves a plain tensor in the model), and weights tied by assignment get the same substituted tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from natgrad.exceptions import InvalidInputError, InvalidTypeError

_CALL = "from_module"
OutputSelector = int | str | Callable[[Any], Tensor] | None


class ModuleRecord(NamedTuple):
    """What ``from_module`` parametrised: the structured route re-runs ``module(*args, **kwargs)`` with hooks.

    Attributes:
        module: the model.
        args: positional inputs.
        kwargs: keyword inputs.
        select: picks the differentiated tensor from the module's output (None: the output is that tensor).
        seed: the seed every evaluation of φ replays (``from_module(seed=...)``), or None.
        coupled: names of BatchNorm layers that normalise with batch statistics (examples are coupled).
    """

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    select: Callable[[Any], Tensor] | None = None
    seed: int | None = None
    coupled: tuple[str, ...] = ()

    @contextmanager
    def calling(self) -> Iterator[None]:
        """While active, a call of the module returns the tensor φ differentiates (``output=`` selection).

        Lets code that calls the module itself (the structured route) see the same function as φ.
        """
        from natgrad.models._linearized import _math_attention

        select, name = self.select, type(self.module).__name__

        def pick(module: nn.Module, args: tuple, output: Any) -> Tensor:
            return select(output) if select is not None else _only_tensor(output, name)

        handle = self.module.register_forward_hook(pick, prepend=True)
        try:
            with _math_attention():  # batched backward passes through attention need its batching rules
                yield
        finally:
            handle.remove()


def module_record(phi: Any) -> ModuleRecord | None:
    """The record ``from_module`` attached to ``phi`` (``phi.natgrad_module``), or None for other callables."""
    record = getattr(phi, "natgrad_module", None)
    return record if isinstance(record, ModuleRecord) else None


def structured_obstacle(record: ModuleRecord) -> str | None:
    """Why the structured route cannot reproduce this φ, or None (checked before any work)."""
    if record.seed is not None:
        return (
            "phi replays a fixed random state (from_module(seed=...)), which the layer-by-layer re-runs of "
            "the structured route do not reproduce"
        )
    return None


def _tensors(value: Any) -> Iterator[tuple[str, Tensor]]:
    """(position, tensor) for every tensor in nested tuples, lists and dicts."""
    if isinstance(value, Tensor):
        yield "", value
    elif isinstance(value, tuple | list):
        for i, v in enumerate(value):
            yield from ((f"[{i}]{p}", t) for p, t in _tensors(v))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from ((f"[{k!r}]{p}", t) for p, t in _tensors(v))


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, tuple | list):
        inner = ", ".join(_describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _selector(output: OutputSelector) -> Callable[[Any], Tensor] | None:
    if output is None or callable(output):
        return output
    if isinstance(output, int | str):
        return lambda out: out[output]
    raise InvalidTypeError(
        f"{_CALL}: output must be None, an int or str index, or a callable, got {type(output).__name__}"
    )


def _only_tensor(out: Any, name: str) -> Tensor:
    """The output itself, or the one tensor in a tuple/dict output (e.g. MultiheadAttention's (out, None))."""
    if isinstance(out, Tensor):
        return out
    found = list(_tensors(out))
    if len(found) == 1:
        return found[0][1]
    raise InvalidTypeError(
        f"{_CALL}: {name}.forward returned {_describe(out)}, with {len(found)} tensors; pass "
        "from_module(..., output=0) (an index or key, or a callable) to choose the tensor to differentiate"
    )


def _labelled_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[tuple[str, Tensor]]:
    """("input", t), ("input 1[0]", t), ("kwargs['mask']", t): every input tensor with a readable label."""
    for i, arg in enumerate(args):
        label = "input" if len(args) == 1 else f"input {i}"
        yield from ((label + position, t) for position, t in _tensors(arg))
    for key, value in kwargs.items():
        yield from ((f"kwargs[{key!r}]" + position, t) for position, t in _tensors(value))


def _check_inputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], params: dict[str, Tensor]
) -> None:
    """Floating inputs must have the parameters' dtype, and every input tensor their device."""
    dtypes = {p.dtype for p in params.values()}
    devices = {p.device for p in params.values()}
    name = type(module).__name__
    for where, t in _labelled_inputs(args, kwargs):
        if len(devices) == 1 and t.device not in devices:
            (device,) = devices
            raise InvalidTypeError(
                f"{_CALL}: {where} is on {t.device} but the parameters of {name} are on {device}; move "
                f"the inputs with .to({str(device)!r}) (or the model with model.to({str(t.device)!r}))"
            )
        if len(dtypes) == 1 and t.is_floating_point() and t.dtype not in dtypes:
            (dtype,) = dtypes
            raise InvalidTypeError(
                f"{_CALL}: {where} is {t.dtype} but the parameters of {name} are {dtype}; convert the "
                f"inputs with .to({dtype}) (or the model with model.to({t.dtype}))"
            )


def _batch_statistics(module: nn.Module) -> tuple[list[str], list[nn.modules.batchnorm._NormBase]]:
    """BatchNorm layers normalising with batch statistics, and the norm layers that would update buffers."""
    coupled = [
        name
        for name, sub in module.named_modules()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and (sub.training or sub.running_mean is None)
    ]
    updating = [
        sub
        for sub in module.modules()
        if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.training and sub.track_running_stats
    ]
    return coupled, updating


_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class _Substitution:
    """Runs the module with parameter tensors substituted into its own slots, restoring them afterwards.

    One slot per (module instance, local name): ``model.modules()`` lists a shared instance once, and weights
    tied by assignment (two slots holding one Parameter) both get the tensor of the Parameter's first name.
    Norm layers in training mode see no running statistics while the module runs, so they normalise with
    the batch's and update nothing. With a seed, each call replays that random state (``fork_rng``).
    """

    def __init__(self, module: nn.Module, seed: int | None = None) -> None:
        self.module, self.seed = module, seed
        name_of = {id(p): name for name, p in module.named_parameters()}
        self.slots = [
            (sub, local, name_of[id(p)])
            for sub in module.modules()
            for local, p in sub._parameters.items()
            if p is not None
        ]
        _, self.updating = _batch_statistics(module)
        devices = {p.device for p in module.parameters()}
        self.cuda = list(range(torch.cuda.device_count())) if any(d.type == "cuda" for d in devices) else []

    def __call__(self, params: Mapping[str, Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        slots = [(sub, local, name) for sub, local, name in self.slots if name in params]
        saved = [sub._parameters[local] for sub, local, _ in slots]
        stats = [
            (sub, {b: sub._buffers.get(b) for b in _STAT_BUFFERS if b in sub._buffers})
            for sub in self.updating
        ]
        # torch.manual_seed seeds every CUDA device: fork them all
        rng = torch.random.fork_rng(devices=self.cuda) if self.seed is not None else nullcontext()
        try:
            for sub, local, name in slots:
                sub._parameters[local] = params[name]  # type: ignore[assignment]  # a tensor stands in
            for sub, buffers in stats:
                for b in buffers:
                    sub._buffers[b] = None
            with rng:
                if self.seed is not None:
                    torch.manual_seed(self.seed)
                return self.module(*args, **kwargs)
        finally:
            for (sub, local, _), original in zip(slots, saved, strict=True):
                sub._parameters[local] = original
            for sub, buffers in stats:
                sub._buffers.update(buffers)


def functional_call(
    module: nn.Module,
    params: Mapping[str, Tensor],
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """``module(*args, **kwargs)`` with ``params`` (names as in ``named_parameters()``) in place of its parameters.

    Like ``torch.func.functional_call`` (and usable under torch.func transforms), but safe for the models
    that one leaves changed: a module instance used several times, weights tied by assignment (give the first
    name; every slot of that Parameter gets the tensor), and BatchNorm in training mode (batch statistics, no
    update of the running ones). The model's ``Parameter`` objects are restored afterwards, also on error.
    Parameters not in ``params`` keep their values.
    """
    if not isinstance(module, nn.Module):
        raise InvalidTypeError(
            f"functional_call: module must be a torch.nn.Module, got {type(module).__name__}"
        )
    known = {name for name, _ in module.named_parameters()}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidInputError(
            f"functional_call: {type(module).__name__} has no parameters named {unknown}; expected names "
            "from module.named_parameters() (a tied or shared parameter under its first name)"
        )
    return _Substitution(module)(params, args if isinstance(args, tuple) else (args,), dict(kwargs or {}))


def from_module(
    module: nn.Module,
    inputs: Any,
    *,
    kwargs: dict[str, Any] | None = None,
    output: OutputSelector = None,
    seed: int | None = None,
) -> tuple[Callable[[dict[str, Tensor]], Tensor], dict[str, Tensor]]:
    """The parametrisation φ(ξ) = module(inputs) as a function of the trainable parameters.

    Parameters with ``requires_grad=False`` (frozen) and buffers keep the module's own values; a module
    instance used several times and weights tied by assignment appear once, under their first name, and stay
    tied. Calling φ never changes the model: its ``Parameter`` objects are restored after every call.

    Train-mode layers: BatchNorm in training mode normalises with the statistics of the batch, so every
    output depends on every example (the result's ``info["coupled_examples"]`` names these layers); the
    running statistics are not updated by φ. Randomness (dropout in training mode) makes φ a different
    function at each call, which the engine refuses; ``seed`` fixes it: every evaluation of φ then runs with
    the random generators seeded with ``seed`` (inside ``torch.random.fork_rng``, so the caller's random
    state is untouched), i.e. with one fixed dropout mask for φ, its Jacobian and the pushforward.

    Args:
        module: any ``nn.Module``.
        inputs: a Tensor or a tuple of positional inputs.
        kwargs: keyword inputs passed to ``module.forward``.
        output: which tensor of a tuple/dict output to differentiate: an index or key, or a callable of the
            output. By default a tensor output is used as is, and an output with exactly one tensor
            (``nn.MultiheadAttention(..., need_weights=False)`` returns ``(out, None)``) uses that tensor.
        seed: replay this random state at every evaluation (see above); None evaluates φ as it is.

    Returns:
        ``(phi, params)``: ``phi(params) == module(*inputs, **kwargs)``, and ``params`` a dict of detached
        parameter tensors (sharing storage with the module). ``phi`` is a plain function carrying the attribute
        ``phi.natgrad_module``, a :class:`ModuleRecord` that lets ``natural_gradient`` use the
        layer-structured route (``method="structured"``).
    """
    if not isinstance(module, nn.Module):
        raise InvalidTypeError(f"{_CALL}: module must be a torch.nn.Module, got {type(module).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidTypeError(f"{_CALL}: seed must be an int or None, got {type(seed).__name__}")
    params = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise InvalidInputError(
            f"{_CALL}: {type(module).__name__} has no parameters with requires_grad=True; "
            "unfreeze the parameters to differentiate"
        )
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    kw = dict(kwargs or {})
    _check_inputs(module, args, kw, params)
    select = _selector(output)
    call = _Substitution(module, seed)
    coupled, _ = _batch_statistics(module)
    names = frozenset(params)  # a subset may be given: the others keep the module's values

    def phi(p: dict[str, Tensor]) -> Tensor:
        if not hasattr(p, "keys") or not names.issuperset(p.keys()):
            unknown = sorted(set(p) - names) if hasattr(p, "keys") else type(p).__name__
            raise InvalidInputError(
                f"from_module: phi(params) got parameter names the module does not have: {unknown}; expected "
                f"keys among those of the params from_module returned ({sorted(names)})"
            )
        out = call(p, args, kw)
        return select(out) if select is not None else _only_tensor(out, type(module).__name__)

    phi.natgrad_module = ModuleRecord(module, args, kw, select, seed, tuple(coupled))  # type: ignore[attr-defined]
    return phi, params
