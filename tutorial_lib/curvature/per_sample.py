"""Per-sample gradients of a causal LM (or a small torch classifier) over a chosen parameter subset.

Fisher Removal and Fisher Forgetting need the matrix G whose rows are per-example gradients
g_i = ∇ℓ(θ; x_i) (``docs/method.md`` §2). Four ways to get it, all exact:

- ``"hooks"`` (default): one forward pass, one backward pass that stops at the outputs of the
  modules holding the chosen parameters, then per-sample weight gradients from the saved
  activations and output gradients (an einsum per ``Linear``/``Conv1D``, a scatter per
  ``Embedding``, the normalised input per ``LayerNorm``). Tied parameters add up their uses.
- ``"loop"``: a batch-1 forward and backward per sample (the reference).
- ``"vmap"``: ``torch.func.vmap`` of ``torch.func.grad``.
- ``"opacus"``: Opacus ``GradSampleModule`` hooks.

``bench/per_sample_grads.py`` measures them against one batched backward. Notebook 02, "Per-sample
gradients".
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .memory import check_memory
from .outputs import lm_outputs, sample_losses

METHODS = ("hooks", "loop", "vmap", "opacus")


# ----------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ParameterSpace:
    """An ordered parameter subset of a model and the flat vector it spans (length ``dim``)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def sizes(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> dict[str, tuple[int, int]]:
        out, start = {}, 0
        for name, size in zip(self.names, self.sizes):
            out[name] = (start, start + size)
            start += size
        return out

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        table = dict(model.named_parameters())
        return [table[n] for n in self.names]

    def flatten(self, tensors) -> torch.Tensor:
        """Concatenate a dict (name -> tensor) or a list in ``names`` order into one flat vector."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector (or the last dimension of a batch of them) back into named tensors."""
        if vector.shape[-1] != self.dim:
            raise ValueError(f"vector has length {vector.shape[-1]}, the parameter space has {self.dim}")
        lead = vector.shape[:-1]
        parts = torch.split(vector, self.sizes, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def get(self, model: nn.Module) -> torch.Tensor:
        """The current values of the subset as one flat vector (a copy)."""
        return self.flatten([p.detach() for p in self.parameters(model)]).clone()

    @torch.no_grad()
    def add_(self, model: nn.Module, delta: torch.Tensor) -> None:
        """θ ← θ + delta, in place, for the subset."""
        for p, d in zip(self.parameters(model), self.unflatten(delta).values()):
            p.add_(d.to(p.dtype))


def select_parameters(model: nn.Module, subset=None) -> ParameterSpace:
    """The trainable parameters of ``model`` named by ``subset``.

    ``subset`` is ``None`` or ``"all"`` (every trainable parameter, a tied weight once), or a name or
    list of names, each a module or a parameter (``"transformer.h.3"``, ``"lm_head"``,
    ``"transformer.ln_f.weight"``). A name that matches nothing is an error.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if subset is None or subset == "all":
        chosen = named
    else:
        wanted = [subset] if isinstance(subset, str) else list(subset)
        if not wanted:
            raise ValueError("the parameter subset is empty; pass None or 'all' for every parameter")
        # a tied weight is listed once by named_parameters(); a module that only reaches it through
        # the tie (GPT-2's lm_head) still selects it
        aliases = {}
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                aliases.setdefault(id(p), set()).add(f"{mod_name}.{p_name}" if mod_name else p_name)
        chosen = []
        for name in wanted:
            hits = [
                (n, p) for n, p in named
                if any(a == name or a.startswith(name + ".") for a in aliases.get(id(p), {n}) | {n})
            ]
            if not hits:
                raise ValueError(f"parameter subset {name!r} names no trainable parameter of {type(model).__name__}")
            chosen += [h for h in hits if all(h[1] is not c[1] for c in chosen)]
        order = {id(p): i for i, (_, p) in enumerate(named)}
        chosen.sort(key=lambda np_: order[id(np_[1])])
    return ParameterSpace(tuple(n for n, _ in chosen), tuple(p.shape for _, p in chosen))


def _batch_size(batch) -> int:
    return len(batch["input_ids"]) if isinstance(batch, dict) else len(batch[0])


def _slice(batch, i: int):
    if isinstance(batch, dict):
        return {k: v[i : i + 1] for k, v in batch.items()}
    return tuple(v[i : i + 1] for v in batch)


def _check_gradients(G: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(G.sum(dim=1)).all()):  # a row sum is non-finite iff an entry is (barring overflow)
        bad = torch.nonzero(~torch.isfinite(G).all(dim=1)).flatten().tolist()
        raise FloatingPointError(f"non-finite per-sample gradients for examples {bad}")
    return G


# ----------------------------------------------------------------------------------- hooks
def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return ()
    return Conv1D


class _Record(NamedTuple):
    module: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor


def module_kind(module: nn.Module) -> str:
    """``linear`` | ``conv1d`` | ``embedding`` | ``layernorm`` | ``rmsnorm`` | ``other`` (what the hooks
    can handle). ``rmsnorm``: torch's ``nn.RMSNorm`` and the Hugging Face RMS norms (Llama, Qwen2,
    Mistral, Gemma...: a class named ``*RMSNorm`` whose only parameter is a 1-D ``weight``, each output
    an affine function of it)."""
    for base, kind in ((nn.Linear, "linear"), (_conv1d_type(), "conv1d"), (nn.Embedding, "embedding"), (nn.LayerNorm, "layernorm")):
        if isinstance(module, base):
            # a subclass that changes the forward (Gemma's scaled embedding) is not what the hooks assume
            return kind if type(module).forward is base.forward else "other"
    if isinstance(module, nn.RMSNorm) or _is_hf_rmsnorm(module):
        return "rmsnorm"
    return "other"


def _is_hf_rmsnorm(module: nn.Module) -> bool:
    params = dict(module.named_parameters(recurse=False))
    return type(module).__name__.endswith("RMSNorm") and list(params) == ["weight"] and params["weight"].dim() == 1


def _weight_slope(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """∂ output / ∂ weight, per element, of a module whose output is affine in its ``weight`` (an RMS
    norm: w ⊙ x̂, or (1 + w) ⊙ x̂ in Gemma): the module's own forward at w = 1 minus at w = 0, so the
    normalisation is computed exactly as the model computes it (dtype casts included)."""
    w = mod.weight
    ones, zeros = torch.ones_like(w), torch.zeros_like(w)
    with torch.no_grad():
        return torch.func.functional_call(mod, {"weight": ones}, (x,)) - torch.func.functional_call(mod, {"weight": zeros}, (x,))


def owning_modules(model: nn.Module, space: ParameterSpace) -> list[tuple[str, nn.Module, dict[str, str]]]:
    """Modules that directly hold a parameter of ``space``: (module name, module, {local name: space name}).
    A tied parameter appears under every module that uses it."""
    by_id = {id(p): n for n, p in zip(space.names, space.parameters(model))}
    out = []
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        own = {ln: by_id[id(p)] for ln, p in mod.named_parameters(recurse=False) if id(p) in by_id}
        if own and all(m is not mod for _, m, _ in out):
            out.append((mod_name, mod, own))
    return out


@dataclass
class Captured:
    """What :func:`capture` recorded: the ``records`` of the modules' inputs and outputs, the
    ``output_grads`` of Σ_i ℓ_i with respect to each recorded output, and the per-example ``losses``."""

    records: list
    output_grads: tuple
    losses: torch.Tensor


def capture(model: nn.Module, batch, modules: list[nn.Module], outputs_fn=lm_outputs) -> Captured:
    """Forward ``batch`` once with the inputs and outputs of ``modules`` recorded, and the gradient of
    Σ_i ℓ_i with respect to each recorded output (backward stops there: no weight gradients).
    Returns a :class:`Captured`."""
    records: list[_Record] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: records.append(_Record(mod, inp[0].detach(), out))) for m in modules]
    try:
        losses = sample_losses(outputs_fn(model, batch))
    finally:
        for h in handles:
            h.remove()
    live = [r for r in records if r.output.requires_grad]
    grads = torch.autograd.grad(losses.sum(), [r.output for r in live], allow_unused=True)
    return Captured(live, grads, losses.detach())


def _write(kind: str, rec: _Record, gout: torch.Tensor, local: str, out: torch.Tensor, first: bool) -> None:
    """Write (``first``) or add the per-sample gradient of one recorded module call for its parameter
    ``local`` into ``out`` (B, *shape), which may be a strided view into G: no temporaries of G's size."""
    x, mod = rec.inputs, rec.module
    B = out.shape[0]
    if gout.shape[0] != B:
        raise ValueError(
            f"{type(mod).__name__} output has batch dimension {gout.shape[0]}, expected {B}: an input was "
            "broadcast over the batch (pass position_ids for the whole batch)"
        )
    g = gout.reshape(B, -1, gout.shape[-1])
    if kind in ("linear", "conv1d") and local == "weight":
        a = x.reshape(B, -1, x.shape[-1])
        left, right = (g.transpose(1, 2), a) if kind == "linear" else (a.transpose(1, 2), g)  # Conv1D weight is (in, out)
        if first:
            torch.bmm(left, right, out=out)
        else:
            out.baddbmm_(left, right)
        return
    if kind in ("linear", "conv1d", "layernorm") and local == "bias":
        value = g
    elif kind == "layernorm":
        value = g * nn.functional.layer_norm(x, mod.normalized_shape, eps=mod.eps).reshape(g.shape)
    elif kind == "rmsnorm":
        value = g * _weight_slope(mod, x).reshape(g.shape).to(g.dtype)
    elif kind == "embedding":
        if first:
            out.zero_()
        ids = x.reshape(B, -1)
        for b in range(B):
            out[b].index_add_(0, ids[b], g[b].to(out.dtype))
        return
    else:  # pragma: no cover - filtered by the caller
        raise NotImplementedError(kind)
    if first:
        torch.sum(value, dim=1, out=out)
    else:
        out.add_(value.sum(1))


def layer_per_sample(kind: str, rec: _Record, gout: torch.Tensor, local: str, B: int, dtype) -> torch.Tensor:
    """The per-sample gradient of one recorded module call for its parameter ``local``, (B, *shape)."""
    shape = getattr(rec.module, local).shape
    out = torch.empty(B, *shape, dtype=dtype, device=gout.device)
    _write(kind, rec, gout, local, out, first=True)
    return out


def _hooks(model, batch, space: ParameterSpace, outputs_fn) -> torch.Tensor:
    owners = owning_modules(model, space)
    for mod_name, mod, _ in owners:
        if module_kind(mod) == "other":
            raise NotImplementedError(
                f"per-sample gradients by hooks do not support {type(mod).__name__} ({mod_name or 'the model'}); "
                "use method='loop' or choose another parameter subset"
            )
    local = {id(m): own for _, m, own in owners}
    captured = capture(model, batch, [m for _, m, _ in owners], outputs_fn)
    records, gouts, losses = captured.records, captured.output_grads, captured.losses
    # G's rows are products and sums of these: checking them is as good as checking G, and far smaller
    check_finite([losses, *(r.inputs for r in records if r.inputs.is_floating_point()), *(g for g in gouts if g is not None)])
    B = _batch_size(batch)
    p0 = space.parameters(model)[0]
    G = torch.empty(B, space.dim, dtype=p0.dtype, device=p0.device)
    views = {n: G[:, a:b].view(B, *s) for (n, (a, b)), s in zip(space.offsets.items(), space.shapes)}
    written: set[str] = set()
    for rec, gout in zip(records, gouts):
        if gout is None:
            continue
        kind = module_kind(rec.module)
        for ln, name in local[id(rec.module)].items():
            _write(kind, rec, gout, ln, views[name], first=name not in written)  # a tied weight adds its uses
            written.add(name)
    for name in space.names:
        if name not in written:  # not reached by the loss
            views[name].zero_()
    return G


def check_finite(tensors) -> None:
    sums = torch.stack([t.sum().to(torch.float64) for t in tensors])  # one fast reduction per tensor
    if not bool(torch.isfinite(sums).all()):
        raise FloatingPointError("non-finite values in the loss or the activations: per-sample gradients would hold NaN or inf")


def _loop(model, batch, space: ParameterSpace, outputs_fn) -> torch.Tensor:
    params = space.parameters(model)
    rows = []
    for i in range(_batch_size(batch)):
        loss = sample_losses(outputs_fn(model, _slice(batch, i)))[0]
        rows.append(space.flatten(torch.autograd.grad(loss, params)))
    return torch.stack(rows)


def _vmap(model, batch, space: ParameterSpace, outputs_fn) -> torch.Tensor:
    values = {n: p.detach() for n, p in zip(space.names, space.parameters(model))}

    def loss_one(theta, *items):
        one = dict(zip(keys, (t.unsqueeze(0) for t in items))) if keys else tuple(t.unsqueeze(0) for t in items)
        return sample_losses(outputs_fn(_Bound(model, theta), one))[0]

    if isinstance(batch, dict) and "attention_mask" in batch:
        # one example at a time needs no padding mask (right padding, causal attention): fold it into
        # the labels instead, which keeps Hugging Face's data-dependent mask code out of vmap
        batch = dict(batch)
        mask = batch.pop("attention_mask")
        batch["labels"] = torch.where(mask.bool(), batch.get("labels", batch["input_ids"]), -100)
    keys = list(batch.keys()) if isinstance(batch, dict) else None
    items = list(batch.values()) if keys else list(batch)
    with warnings.catch_warnings():  # torch's slow-path notice for attention under vmap
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")
        grads = vmap(grad(loss_one), in_dims=(None, *([0] * len(items))))(values, *items)
    return torch.cat([grads[n].reshape(len(items[0]), -1) for n in space.names], dim=1)


class _Bound(nn.Module):
    """``model`` called with some parameters replaced (for ``torch.func``)."""

    def __init__(self, model, params):
        super().__init__()
        self._model, self._params = model, params

    def forward(self, *args, **kwargs):
        return functional_call(self._model, self._params, args, kwargs)


def _opacus(model, batch, space: ParameterSpace, outputs_fn) -> torch.Tensor:
    from opacus import GradSampleModule

    chosen = {id(p) for p in space.parameters(model)}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    was_training = model.training
    gsm = GradSampleModule(model, loss_reduction="sum", strict=False)
    gsm.train()  # Opacus records activations only in training mode (our GPT-2s have no dropout)
    try:
        with warnings.catch_warnings():  # Opacus' full backward hooks on the first module of the graph
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            sample_losses(outputs_fn(gsm, batch)).sum().backward()
        G = torch.cat([p.grad_sample.reshape(_batch_size(batch), -1) for p in space.parameters(model)], dim=1)
    finally:
        gsm._close()
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
            p.grad = None
            if hasattr(p, "grad_sample"):
                del p.grad_sample
    return G


def per_sample_gradients(model: nn.Module, batch, params=None, method: str = "hooks", outputs_fn: Callable = lm_outputs) -> torch.Tensor:
    """Per-example gradients of ℓ(θ; x_i) for the examples of ``batch``, shape (B, d).

    ``params`` is a :class:`ParameterSpace` or a subset for :func:`select_parameters`; ``outputs_fn``
    is :func:`lm_outputs` (a Hugging Face causal LM; ``batch`` a dict) or :func:`classifier_outputs`
    (``batch = (x, y)``). The model's ``.grad`` fields are left as they were, and it is evaluated in
    the mode it is in (call ``model.eval()`` first when it has dropout).
    """
    if method not in METHODS:
        raise ValueError(f"unknown per-sample gradient method {method!r}; expected one of {', '.join(METHODS)}")
    if _batch_size(batch) == 0:
        raise ValueError("the batch is empty: no per-sample gradients to compute")
    space = params if isinstance(params, ParameterSpace) else select_parameters(model, params)
    if method == "hooks":
        return _hooks(model, batch, space, outputs_fn)  # checks the (smaller) factors of G instead
    fn = {"loop": _loop, "vmap": _vmap, "opacus": _opacus}[method]
    return _check_gradients(fn(model, batch, space, outputs_fn))


def gradient_matrix(model, batches, params=None, method: str = "hooks", outputs_fn: Callable = lm_outputs, max_bytes: int | None = None):
    """Stack per-sample gradients of several batches into G (m, d); returns (G, space).
    The size m·d is checked against available memory before the first batch."""

    batches = list(batches)
    if not batches or sum(_batch_size(b) for b in batches) == 0:
        raise ValueError("no examples: the gradient set would be empty")
    space = params if isinstance(params, ParameterSpace) else select_parameters(model, params)
    m = sum(_batch_size(b) for b in batches)
    p0 = space.parameters(model)[0]
    check_memory("per-sample gradient matrix", m * space.dim * p0.element_size(), max_bytes, p0.device)
    G = torch.cat([per_sample_gradients(model, b, space, method, outputs_fn) for b in batches])
    return G, space
