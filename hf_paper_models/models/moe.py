"""Mixture-of-experts machinery shared by three papers, each configuring it its own way.

- Jacobs, Jordan, Nowlan & Hinton (1991), "Adaptive mixtures of local experts": a dense softmax gate
  ``p = softmax(x W_g)`` over every expert (``SoftmaxGate``); every expert sees every input.
- Shazeer, Mirhoseini, Maziarz, Davis, Le, Hinton & Dean (2017), "Outrageously large neural networks:
  the sparsely-gated mixture-of-experts layer": the noisy top-k gate
  ``G(x) = Softmax(KeepTopK(H(x), k))``, ``H(x)_i = (x W_g)_i + StandardNormal() · Softplus((x W_noise)_i)``
  (§2.1, ``NoisyTopKGate``); the importance loss ``w_importance · CV(Importance(X))²`` and the smooth
  load loss ``w_load · CV(Load(X))²`` whose ``Load`` sums the normal-CDF probabilities
  ``P(x, i) = Φ(((x W_g)_i − kth_excluding(H(x), k, i)) / Softplus((x W_noise)_i))`` (Appendix A).
- Fedus, Zoph & Shazeer (2022), "Switch Transformers": top-1 routing (``SwitchRouter``) with an expert
  capacity ``capacity_factor · tokens / experts``; tokens beyond it are dropped (the layer returns 0 for
  them, so the residual carries them through unchanged); multiplicative jitter on the router input in
  training; the router computed in float32 under bfloat16 ("selective precision", §2.4); the
  load-balancing loss ``α · N · Σ_i f_i · P_i`` (§2.2, eq. 4-6); optionally "No-Token-Left-Behind"
  re-routing of overflowed tokens to their next choice (Appendix); expert dropout (§3).

Dispatch (``dispatch``) groups the (token, expert) assignments by expert with one stable sort and runs
all experts as one grouped matrix multiply over the contiguous slices (``torch.nn.functional.grouped_mm``
where the device has it, else a loop over the experts' slices): no Python loop over tokens, no
``experts × tokens`` one-hot tensors, and the FLOPs are those of the kept tokens only, so the cost stays
near a dense FFN of the same active FLOPs however many experts there are. On the CPU (eager) each
expert is one matmul into memory reused from the previous step once it is free (``_reusable_empty``:
the projections' outputs, input gradients and stacked weight gradients, and the dispatch's permuted
input, combined output and their gradients), and a ReLU runs in place
both ways: mapping those large tensors afresh every step cost more page-fault time than the experts'
matmuls spent over a dense FFN's. With several intra-op threads, small experts' matmuls are split over
single-threaded worker threads (``_for_each_expert``) instead of each being shared by the whole team.

Hub-exportable: only the standard library and ``torch``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Experts and dispatch
# ----------------------------------------------------------------------------------------------


def _grouped_mm_available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.grouped_mm(x, weight)`` runs here: the function exists, the device has a kernel, and
    the operands' strides are multiples of 16 bytes (the kernels' layout rule)."""
    if not hasattr(F, "grouped_mm"):
        return False
    if any(stride * t.element_size() % 16 for t in (x, weight) for stride in t.stride() if stride != 1):
        return False
    if torch.compiler.is_compiling():  # its shape function (meta kernel) takes bfloat16 only
        return x.dtype == torch.bfloat16 and x.device.type in ("cpu", "cuda")
    if x.device.type == "cuda":  # documented for bfloat16 on compute capability 8.0 and above
        if x.dtype == torch.bfloat16:
            return torch.cuda.get_device_capability(x.device) >= (8, 0)
        return _grouped_mm_runs(str(x.device), x.dtype)  # float32 / float16 where this build has them
    # The CPU kernel takes float32 and the half types, and some want 16-byte aligned operands
    # (memory-mapped weights may not be).
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and x.data_ptr() % 16 == 0
        and weight.data_ptr() % 16 == 0
    )


@functools.cache
def _grouped_mm_runs(device: str, dtype: torch.dtype) -> bool:
    """Whether this build's ``grouped_mm`` takes ``dtype`` on ``device``, forward and backward: tried
    once on a tiny case (the loop of per-expert matmuls is the fallback)."""
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.split(":")[0], enabled=False):
            x = torch.zeros(32, 16, device=device, dtype=dtype, requires_grad=True)
            weight = torch.zeros(2, 16, 16, device=device, dtype=dtype, requires_grad=True)
            offsets = torch.tensor([16, 32], device=device, dtype=torch.int32)
            out = F.grouped_mm(x, weight, offs=offsets)
            out.backward(torch.ones_like(out))
        return True
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _segments(offsets: torch.Tensor):
    start = 0
    for expert, end in enumerate(offsets.tolist()):  # one host sync, then contiguous slices
        if end > start:
            yield expert, start, end
        start = end


def _loop_forward(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    out = x.new_zeros(x.shape[0], weight.shape[-1])
    for expert, start, end in _segments(offsets):
        torch.mm(x[start:end], weight[expert], out=out[start:end])
    return out


def _loop_backward(
    x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x, grad_weight = torch.zeros_like(x), torch.zeros_like(weight)
    for expert, start, end in _segments(offsets):
        torch.mm(grad[start:end], weight[expert].t(), out=grad_x[start:end])
        torch.mm(x[start:end].t(), grad[start:end], out=grad_weight[expert])
    return grad_x, grad_weight


# The per-expert loop as an opaque operator (forward and backward), so that ``torch.compile`` traces
# through the layer without a graph break where ``grouped_mm`` is unavailable. The namespace is this
# module's name: the copy saved beside a Hub checkpoint registers its own.
_NAMESPACE = re.sub(r"\W", "_", __name__)
_loop_op = torch.library.custom_op(f"{_NAMESPACE}::grouped_linear", _loop_forward, mutates_args=())
_loop_backward_op = torch.library.custom_op(
    f"{_NAMESPACE}::grouped_linear_backward", _loop_backward, mutates_args=()
)


@_loop_op.register_fake
def _(x, weight, offsets):
    return x.new_empty(x.shape[0], weight.shape[-1])


@_loop_backward_op.register_fake
def _(x, weight, offsets, grad):
    return torch.empty_like(x), torch.empty_like(weight)


def _loop_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _loop_autograd(ctx, grad):
    x, weight, offsets = ctx.saved_tensors
    grad_x, grad_weight = _loop_backward_op(x, weight, offsets, grad.contiguous())
    return grad_x, grad_weight, None


_loop_op.register_autograd(_loop_autograd, setup_context=_loop_setup_context)


def _reusable_empty(owner: Any, slot: str, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` (``like``'s dtype and device) on the memory this
    function last gave for ``(owner, slot)`` when nothing else holds that memory any more (no tensor or
    view of it is alive) and it is large enough, else on fresh memory.

    Why (CPU): a stacked expert gradient is experts × the dense layer's (256 MiB per projection at 64
    experts of 512 × 2048 in float32), and the hidden activations of 4,096 tokens 32 MiB, above glibc's
    32 MiB mmap threshold: every step mapped them anew and the kernel faulted in and zeroed each 4 KiB
    page. At 64 experts that cost as much system time (about 250 ms) as half the expert matmuls' own
    work, the whole gap to transformers' per-expert ``nn.Linear``s, whose small tensors glibc recycles.
    The price: between steps each slot keeps its largest buffer so far (for a Switch layer of 4,096
    tokens about 80 MiB of activations besides the gradients), until the owner is freed.
    """
    key = (id(owner), slot)
    ref, storage = _BUFFERS.get(key, (None, None))
    nbytes = math.prod(shape) * like.element_size()
    if (
        ref is not None
        and ref() is owner
        and storage.nbytes() >= nbytes
        and torch._C._storage_Use_Count(storage._cdata) == 1
    ):
        stride = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        return like.new_empty(0).set_(storage, 0, tuple(shape), stride)
    buffer = like.new_empty(tuple(shape))
    if ref is None or ref() is not owner:
        weakref.finalize(owner, _BUFFERS.pop, key, None)
    _BUFFERS[key] = (weakref.ref(owner), buffer.untyped_storage())
    return buffer


def _reusable_empty_like(weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s gradient on the memory of its last one once nothing holds it (the optimiser's
    ``zero_grad(set_to_none=True)`` dropped it); see ``_reusable_empty``."""
    return _reusable_empty(weight, "grad", weight.shape, weight)


# (id(owner), slot) -> (weak reference to the owner, the last buffer's storage); entries go with their owner.
_BUFFERS: dict[tuple[int, str], tuple[weakref.ref, torch.UntypedStorage]] = {}


# Expert threads (CPU). One expert's matmul is small (at 256 experts of 4,096 tokens, 16 rows), and the
# intra-op threads of one small GEMM mostly wait on each other: so where the caller has several intra-op
# threads and the experts' matmuls are small, the experts are split into that many contiguous groups of
# about equal rows, each run in order by a worker thread doing single-threaded matmuls; the caller
# waits. Measured on 2 cores (d_model 512, d_ff 2048, 4,096 tokens, the layer's forward + backward over
# a dense FFN's, same-process A/B runs): 64 experts 1.22-1.41x -> 1.11-1.20x, 256 experts 1.46-1.71x ->
# 1.13-1.32x; at 32 experts and fewer (128 rows an expert and more) the split was no faster, so it is
# not used there.
_WORKERS: dict[str, Any] = {"pool": None, "size": 0}
_WORKERS_LOCK = threading.Lock()
_PARALLEL_MIN_MACS = 1 << 24  # a layer's matmuls smaller than this are not worth handing over
_PARALLEL_MAX_MACS_PER_EXPERT = 96 << 20  # one expert's matmul above this runs well on the intra-op threads


def _start_worker(ready: threading.Barrier) -> None:
    torch.get_num_threads()  # ATen sets a thread's count on its first use: settle it, then lower it
    torch.set_num_threads(1)
    ready.wait(timeout=60)  # every worker is started (and single-threaded) before the pool is used


def _worker_pool(size: int) -> ThreadPoolExecutor:
    with _WORKERS_LOCK:
        if _WORKERS["size"] != size:
            caller = torch.get_num_threads()
            if _WORKERS["pool"] is not None:
                _WORKERS["pool"].shutdown(wait=True)
            ready = threading.Barrier(size + 1)
            pool = ThreadPoolExecutor(
                size, thread_name_prefix="hf_paper_models-experts", initializer=_start_worker, initargs=(ready,)
            )
            for _ in range(size):
                pool.submit(int)  # each submit starts a thread while fewer than `size` run
            ready.wait(timeout=60)  # a worker that failed to start breaks the barrier: an error, not a hang
            # set_num_threads also set the count that threads starting from now on take: the caller's again
            torch.set_num_threads(caller)
            _WORKERS.update(pool=pool, size=size)
        return _WORKERS["pool"]


def _forget_workers() -> None:  # a forked child has none of the parent's threads
    _WORKERS.update(pool=None, size=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _for_each_expert(ends: list[int], macs_per_row: int, body) -> None:
    """``body(expert, start, end)`` for every expert (``ends`` the cumulative row counts; empty experts
    included; ``macs_per_row`` one row's multiply-adds in one of ``body``'s matmuls), in order on the
    calling thread, or split over the expert threads (see above) when the caller has several intra-op
    threads and the experts' matmuls are small (but not the layer's). ``body`` writes disjoint memory."""
    threads = torch.get_num_threads()
    rows = ends[-1] if ends else 0
    busy = sum(1 for start, end in zip([0, *ends], ends) if end > start)
    workers = min(threads, busy)
    macs = rows * macs_per_row
    if (
        workers < 2
        or not _PARALLEL_MIN_MACS <= macs <= _PARALLEL_MAX_MACS_PER_EXPERT * busy
        # a torch function or dispatch mode (a FLOP counter, a tracer) sees only its own thread's ops
        or torch._C._len_torch_function_stack()
        or torch._C._len_torch_dispatch_stack()
    ):
        start = 0
        for expert, end in enumerate(ends):
            body(expert, start, end)
            start = end
        return
    # contiguous groups of experts, cut where the running row count passes each 1/workers of the total
    cuts = [0]
    for expert, end in enumerate(ends):
        if end * workers >= rows * len(cuts) and len(cuts) < workers:
            cuts.append(expert + 1)
    cuts.append(len(ends))

    # grad and inference mode are per thread: a worker starts with grad on and outside inference mode,
    # where writing into the caller's inference tensors would fail
    inference = torch.is_inference_mode_enabled()

    def run(first: int, last: int) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            start = ends[first - 1] if first else 0
            for expert in range(first, last):
                body(expert, start, ends[expert])
                start = ends[expert]

    pool = _worker_pool(threads)
    futures = [pool.submit(run, first, last) for first, last in zip(cuts, cuts[1:]) if last > first]
    wait_for(futures)  # all of them, even when one fails, before anything is returned or raised
    for future in futures:
        future.result()


class _CPUGroupedLinear(torch.autograd.Function):
    """``grouped_linear`` in eager mode on the CPU: the same products, one matmul per expert written
    into ``_reusable_empty`` memory (the output, the input gradient and the stacked weight gradient
    each go on the memory of the last step's once nothing holds it) instead of freshly mapped tensors,
    the experts split over threads where the caller has several (``_for_each_expert``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight, offsets)
        out = _reusable_empty(weight, "out", (x.shape[0], weight.shape[-1]), x)

        def expert_forward(expert: int, start: int, end: int) -> None:  # rows past offsets[-1] stay unspecified
            if end > start:
                torch.mm(x[start:end], weight[expert], out=out[start:end])

        _for_each_expert(offsets.tolist(), weight.shape[1] * weight.shape[2], expert_forward)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _reusable_empty(weight, "grad_x", x.shape, x)
            grad_x[offsets[-1] :].zero_()  # rows past the last expert's: nothing flows back
        if ctx.needs_input_grad[1]:
            grad_weight = _reusable_empty_like(weight)

        def expert_backward(expert: int, start: int, end: int) -> None:
            if end == start:
                if grad_weight is not None:
                    grad_weight[expert].zero_()
                return
            if grad_x is not None:
                torch.mm(grad[start:end], weight[expert].t(), out=grad_x[start:end])
            if grad_weight is not None:
                torch.mm(x[start:end].t(), grad[start:end], out=grad_weight[expert])

        _for_each_expert(offsets.tolist(), weight.shape[1] * weight.shape[2], expert_backward)
        return grad_x, grad_weight, None


class _ReLUInPlace(torch.autograd.Function):
    """ReLU in place, whose backward also writes in place, into the incoming gradient (on the CPU path
    that is ``_CPUGroupedLinear``'s input gradient, handed to nothing else): no d_ff-wide tensor is
    mapped in either direction."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` would run any hook: its own, or one registered for every module
    (``torch.nn.modules.module.register_module_forward_hook`` and the like)."""
    from torch.nn.modules import module as torch_module

    return any((
        module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks,
        torch_module._global_forward_hooks, torch_module._global_forward_pre_hooks,
        torch_module._global_backward_hooks, torch_module._global_backward_pre_hooks,
    ))  # fmt: skip


def _eager_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and hasattr(torch._C, "_storage_Use_Count") and not torch.compiler.is_compiling()


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Row block ``e`` of ``x`` (rows ``offsets[e-1]:offsets[e]``) times ``weight[e]``, for every expert.

    ``weight`` is (experts, in, out): the layout the grouped kernels read directly and whose gradient
    they write directly (no transposed copy of every expert's weights). Rows beyond ``offsets[-1]``
    are left unspecified (the caller masks them). One grouped GEMM where available, else one matmul
    per expert; in eager mode on the CPU through ``_CPUGroupedLinear`` (one matmul per expert into
    reused memory).
    """
    weight = weight.to(x.dtype)
    if _eager_cpu(x):
        return _CPUGroupedLinear.apply(x, weight, offsets)
    if _grouped_mm_available(x, weight):
        return F.grouped_mm(x, weight, offs=offsets)
    return _loop_op(x, weight, offsets)


class Experts(nn.Module):
    """``num_experts`` feed-forward networks ``act(x W_i) W_o`` (no biases, as T5), stored stacked as
    (in, out) matrices: ``wi`` is (experts, d_model, d_ff), ``wo`` (experts, d_ff, d_model) (the transpose
    of ``nn.Linear``'s layout, which is what ``grouped_mm`` reads). ``dropout`` acts on the hidden
    activations: the Switch paper's "expert dropout" when set above the model's rate (§3)."""

    def __init__(self, num_experts: int, d_model: int, d_ff: int, activation: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.num_experts = num_experts
        self.wi = nn.Parameter(torch.empty(num_experts, d_model, d_ff))
        self.wo = nn.Parameter(torch.empty(num_experts, d_ff, d_model))
        self.act = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        hidden = grouped_linear(x_sorted, self.wi, offsets)
        plain_relu = type(self.act) is nn.ReLU and not _hooked(self.act)
        if plain_relu and _eager_cpu(hidden):  # in place: no d_ff-wide tensor to map per step
            hidden = _ReLUInPlace.apply(hidden)  # (grouped_linear saved its inputs, not its output)
        else:
            hidden = self.act(hidden)
        return grouped_linear(self.dropout(hidden), self.wo, offsets)


class _PermuteRows(torch.autograd.Function):
    """``x[perm]`` for a permutation ``perm`` of the rows, whose gradient is ``grad[inverse]``: a gather
    both ways. (Autograd's backward of ``x[index]`` is an accumulating scatter, which must allow for
    repeated indices; a permutation has none.)"""

    @staticmethod
    def forward(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, perm)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` in the order ``perm`` (``inverse`` is its inverse permutation)."""
    return _PermuteRows.apply(x, perm, inverse)


class _CPUPermuteRows(torch.autograd.Function):
    """``permute_rows`` in eager mode on the CPU, both ways into ``_reusable_empty`` memory of ``owner``
    (a d_model-wide tensor of every token is 8 MiB at 4,096 tokens of 512: freshly mapped, its page
    faults cost more than the gather itself). ``owner`` is a module, not an input of the graph: a
    parameter there would make the output require a gradient the caller never asked for."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, owner: nn.Module):
        ctx.save_for_backward(inverse)
        ctx.owner = owner
        return torch.index_select(x, 0, perm, out=_reusable_empty(owner, "permuted", x.shape, x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        out = _reusable_empty(ctx.owner, "permuted_grad", grad.shape, grad)
        return torch.index_select(grad, 0, inverse, out=out), None, None, None


class _CPUCombine(torch.autograd.Function):
    """The end of ``dispatch`` in eager mode on the CPU: ``y[t] = w[t] · y_sorted[inverse[t]]`` for the
    kept assignments (sorted rows below ``kept``) and 0 for the dropped ones, whose rows of ``y_sorted``
    are unspecified memory and never read into the result or the gradients. The output and the
    gradients go on ``_reusable_empty`` memory of ``owner``, and no mask spans the whole tensor."""

    @staticmethod
    def forward(ctx, y_sorted, weights, order, inverse, kept: int, owner):
        out = torch.index_select(y_sorted, 0, inverse, out=_reusable_empty(owner, "combined", y_sorted.shape, y_sorted))
        if kept < len(order):
            out.index_fill_(0, order[kept:], 0.0)  # dropped assignments (before the scaling: 0 · NaN)
        out.mul_(weights.unsqueeze(-1))
        ctx.save_for_backward(y_sorted, weights, order, inverse)
        ctx.kept, ctx.owner = kept, owner
        return out

    @staticmethod
    def backward(ctx, grad):
        y_sorted, weights, order, inverse = ctx.saved_tensors
        kept, owner = ctx.kept, ctx.owner
        grad_sorted = torch.index_select(grad, 0, order, out=_reusable_empty(owner, "combined_grad", grad.shape, grad))
        grad_weights = None
        if ctx.needs_input_grad[1]:  # d out[t] / d w[t] = y_sorted[inverse[t]]: a row-wise dot product
            product = _reusable_empty(owner, "combined_product", (kept, grad.shape[-1]), grad)
            by_row = torch.zeros(len(order), dtype=grad.dtype, device=grad.device)
            by_row[:kept] = torch.mul(grad_sorted[:kept], y_sorted[:kept], out=product).sum(-1)
            grad_weights = by_row.index_select(0, inverse)
        grad_sorted[:kept].mul_(weights.index_select(0, order[:kept]).unsqueeze(-1))
        grad_sorted[kept:].zero_()
        return grad_sorted, grad_weights, None, None, None, None


def dispatch(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    combine_weights: torch.Tensor,
    keep: torch.Tensor,
    experts: Experts,
) -> torch.Tensor:
    """y_t = Σ_j combine_weights[t, j] · Expert_{expert_index[t, j]}(x_t) over the kept assignments.

    ``x`` is (tokens, d); ``expert_index``, ``combine_weights`` and ``keep`` are (tokens, k). Dropped
    assignments cost nothing and contribute 0. Shapes stay static (``torch.compile`` friendly): the
    assignments are sorted by expert (dropped ones last) and the experts run over contiguous slices.
    """
    tokens, k = expert_index.shape
    num_experts = experts.num_experts
    flat_expert = torch.where(keep, expert_index, num_experts).reshape(-1)  # dropped -> after all experts
    order = torch.argsort(flat_expert, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    sorted_expert = flat_expert[order]
    kept_sorted = (sorted_expert < num_experts).unsqueeze(-1)
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=x.device)
    counts = counts.scatter_add_(0, sorted_expert, torch.ones_like(sorted_expert))[:num_experts]
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    # Assignment t·k + j is token t's j-th choice: repeat each token k times, then sort by expert.
    x_assigned = x if k == 1 else x.unsqueeze(1).expand(tokens, k, x.shape[-1]).reshape(tokens * k, -1)
    if _eager_cpu(x):  # the same products; rows past offsets[-1] are neither read nor written
        x_sorted = _CPUPermuteRows.apply(x_assigned, order, inverse, experts)
        weights = combine_weights.reshape(-1).to(x_sorted.dtype)
        y = _CPUCombine.apply(experts(x_sorted, offsets), weights, order, inverse, int(offsets[-1]), experts)
        return (y.view(tokens, k, -1).sum(1) if k > 1 else y).to(x.dtype)
    # Rows past offsets[-1] (dropped assignments) are never computed: zero them on the way in (their
    # input gradient is unspecified) and on the way out, before anything multiplies them (their output
    # is unspecified memory, possibly NaN, and 0 · NaN would reach the router's gradient).
    x_sorted = permute_rows(x_assigned, order, inverse).masked_fill(~kept_sorted, 0.0)
    y_sorted = torch.where(kept_sorted, experts(x_sorted, offsets), 0.0)
    weights_sorted = combine_weights.reshape(-1)[order].unsqueeze(-1).to(y_sorted.dtype)
    y = permute_rows(y_sorted * weights_sorted, inverse, order)
    return (y.view(tokens, k, -1).sum(1) if k > 1 else y).to(x.dtype)


def capacity_rank(
    expert_index: torch.Tensor, group_index: torch.Tensor, num_experts: int, num_groups: int,
    occupied: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's place in its expert's queue within its group, in token order (first come, first
    served, as Mesh TensorFlow and transformers), plus ``occupied`` slots already taken.

    Returns (rank per token, slots taken per (group, expert) afterwards, shape (groups·experts,)).
    """
    key = group_index * num_experts + expert_index
    order = torch.argsort(key, stable=True)
    counts = torch.zeros(num_groups * num_experts, dtype=torch.long, device=key.device)
    counts = counts.scatter_add_(0, key, torch.ones_like(key))
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(key.numel(), device=key.device) - starts[key[order]]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    if occupied is not None:
        rank = rank + occupied[key]
        counts = counts + occupied
    return rank, counts


# ----------------------------------------------------------------------------------------------
# Gates
# ----------------------------------------------------------------------------------------------


class SoftmaxGate(nn.Module):
    """Jacobs et al. (1991): p_i = exp(x·w_i) / Σ_j exp(x·w_j), a dense distribution over all experts."""

    def __init__(self, input_size: int, num_experts: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(input_size, num_experts, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(x), dim=-1)


@dataclass
class NoisyTopKOutput:
    gates: torch.Tensor  # (tokens, experts): softmax over the k kept, exactly 0 elsewhere
    top_k_index: torch.Tensor  # (tokens, k)
    top_k_gates: torch.Tensor  # (tokens, k)
    clean_logits: torch.Tensor  # x W_g
    noisy_logits: torch.Tensor  # H(x)
    noise_std: torch.Tensor  # Softplus(x W_noise)


class NoisyTopKGate(nn.Module):
    """Shazeer et al. (2017), §2.1: ``G(x) = Softmax(KeepTopK(H(x), k))`` with
    ``H(x)_i = (x W_g)_i + StandardNormal() · Softplus((x W_noise)_i)``; KeepTopK sets all but the k
    largest to −∞. The noise is drawn in training only (pass ``noise`` to fix it). Both matrices start
    at zero, as in the paper (Appendix A: "initialize W_g and W_noise to all zeros")."""

    def __init__(self, input_size: int, num_experts: int, k: int):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"NoisyTopKGate: k={k} must be in [1, num_experts={num_experts}].")
        self.k = k
        self.num_experts = num_experts
        self.w_gate = nn.Parameter(torch.zeros(num_experts, input_size))
        self.w_noise = nn.Parameter(torch.zeros(num_experts, input_size))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> NoisyTopKOutput:
        clean = F.linear(x, self.w_gate)
        noise_std = F.softplus(F.linear(x, self.w_noise))
        return noisy_top_k(clean, noise_std, self.k, noise, self.training)


def noisy_top_k(
    clean: torch.Tensor, noise_std: torch.Tensor, k: int, noise: torch.Tensor | None = None, training: bool = False
) -> NoisyTopKOutput:
    """§2.1 from the gate's two projections: H = clean + StandardNormal() · noise_std (noise drawn in
    training unless given), keep the top k of H, softmax over them, 0 elsewhere."""
    if noise is None and training:
        noise = torch.randn_like(clean)
    noisy = clean + noise * noise_std if noise is not None else clean
    top_values, top_index = noisy.topk(k, dim=-1)
    top_gates = torch.softmax(top_values, dim=-1)
    gates = torch.zeros_like(noisy).scatter(-1, top_index, top_gates)
    return NoisyTopKOutput(gates, top_index, top_gates, clean, noisy, noise_std)


class SwitchRouter(nn.Module):
    """Fedus et al. (2022), §2.1-2.4: p(x) = softmax(x W_r), computed in float32 whatever the model's
    dtype or autocast ("selective precision"); in training the router's input is multiplied by
    uniform noise in [1 − ε, 1 + ε] (router jitter; the experts see the clean input).

    ``weight`` is (experts, d_model), a bare parameter rather than an ``nn.Linear`` so that adapters
    targeting linear layers (LoRA "all-linear") leave the router alone and it stays a float32 matmul.
    """

    def __init__(self, d_model: int, num_experts: int, jitter_noise: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        self.jitter_noise = jitter_noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits, float32, shaped like ``x`` with the last dimension = experts."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.training and self.jitter_noise > 0:
                x = x * torch.empty_like(x).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
            return F.linear(x, self.weight.float())


# ----------------------------------------------------------------------------------------------
# Auxiliary losses
# ----------------------------------------------------------------------------------------------


def cooperative_loss(expert_outputs: torch.Tensor, target: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Jacobs et al. (1991), eq. 1: E = ‖d − Σ_i p_i o_i‖², the blended output's error (mean over cases),
    which couples the experts: each one is pushed to cancel the others' residual error.

    ``expert_outputs`` is (..., experts, dim), ``target`` (..., dim), ``gates`` (..., experts).
    """
    blended = (gates.unsqueeze(-1) * expert_outputs).sum(-2)
    return (target - blended).pow(2).sum(-1).mean()


def competitive_loss(expert_outputs: torch.Tensor, target: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Jacobs et al. (1991), eq. 1.3: E = −log Σ_i p_i exp(−½‖d − o_i‖²) (mean over cases), the negative
    log-likelihood of a mixture of unit Gaussians: each expert is pulled towards the whole target in
    proportion to its posterior responsibility, so experts compete and specialise. Shapes as
    ``cooperative_loss``."""
    squared = (target.unsqueeze(-2) - expert_outputs).pow(2).sum(-1)
    log_gates = torch.log(gates.clamp_min(torch.finfo(gates.dtype).tiny))
    return -torch.logsumexp(log_gates - 0.5 * squared, dim=-1).mean()


def cv_squared(values: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """The squared coefficient of variation, Var(v) / Mean(v)² (population variance), of a vector."""
    values = values.float()
    if values.numel() <= 1:
        return values.new_zeros(())
    return values.var(unbiased=False) / (values.mean() ** 2 + eps)


def importance_loss(gates: torch.Tensor) -> torch.Tensor:
    """Shazeer et al. (2017), eq. 6-7 without the weight: CV(Importance(X))², Importance = Σ_x G(x)."""
    return cv_squared(gates.reshape(-1, gates.shape[-1]).sum(0))


def smooth_load(gate: NoisyTopKOutput, k: int) -> torch.Tensor:
    """Appendix A: Load(X)_i = Σ_x Φ(((x W_g)_i − kth_excluding(H(x), k, i)) / Softplus((x W_noise)_i))."""
    return load_probabilities(gate, k).sum(0)


def load_probabilities(gate: NoisyTopKOutput, k: int) -> torch.Tensor:
    """Appendix A, the summand of Load: P(x, i) = Φ(((x W_g)_i − kth_excluding(H(x), k, i)) /
    Softplus((x W_noise)_i)), the smooth probability that expert i is in x's top k; (tokens, experts).

    kth_excluding(H(x), k, i), the k-th largest of the other components, is the (k+1)-th largest of all
    when expert i is among the top k, and the k-th largest when it is not.
    """
    clean, noisy, std = (t.reshape(-1, t.shape[-1]).float() for t in (gate.clean_logits, gate.noisy_logits,
                                                                      gate.noise_std))
    num_experts = noisy.shape[-1]
    if k >= num_experts:  # every expert takes every token: P = 1 (and no -inf threshold to differentiate)
        return torch.ones_like(clean)
    top = noisy.topk(min(k + 1, num_experts), dim=-1).values
    kth = top[:, k - 1 : k]
    kth_plus_one = top[:, k : k + 1]
    in_top_k = noisy >= kth
    threshold = torch.where(in_top_k, kth_plus_one, kth)
    z = (clean - threshold) / std.clamp_min(1e-9)
    return 0.5 * (1.0 + torch.erf(z * 0.5**0.5))  # Φ(z), the standard normal CDF


def load_loss(gate: NoisyTopKOutput, k: int) -> torch.Tensor:
    """Shazeer et al. (2017), eq. 11 without the weight: CV(Load(X))²."""
    return cv_squared(smooth_load(gate, k))


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Fedus et al. (2022), eq. 4-6 without α: N · Σ_i f_i · P_i, f_i the fraction of tokens whose top
    choice is expert i (before capacity), P_i the mean router probability of expert i.

    ``probs`` is (groups, tokens, experts), ``expert_index`` (groups, tokens); computed per group (a
    sequence) and averaged over the groups, as Mesh TensorFlow and transformers do. 1 at perfect balance.
    """
    num_experts = probs.shape[-1]
    fraction = F.one_hot(expert_index, num_experts).float().mean(-2)
    mean_prob = probs.float().mean(-2)
    return num_experts * (fraction * mean_prob).sum(-1).mean()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Zoph et al. (2022, ST-MoE) eq. 5, which transformers' Switch carries: mean over tokens of
    (log Σ_i exp(logit_i))²."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


# ----------------------------------------------------------------------------------------------
# The Switch layer
# ----------------------------------------------------------------------------------------------


@dataclass
class RouterStats:
    """What one MoE layer reports after its forward pass, for the loss and for logging."""

    aux_loss: torch.Tensor  # the weighted auxiliary loss this layer adds to the objective
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted components, by name
    expert_load: torch.Tensor | None = None  # (experts,) fraction of tokens routed to each expert
    dropped_fraction: torch.Tensor | None = None  # fraction of tokens no expert processed
    router_logits: torch.Tensor | None = None  # (..., experts), float32


def expert_capacity(tokens_per_group: int, num_experts: int, capacity_factor: float) -> int:
    """§2.2: expert capacity = (tokens per batch / number of experts) × capacity factor (per group)."""
    return max(1, math.ceil(tokens_per_group * capacity_factor / num_experts))


class SwitchFeedForward(nn.Module):
    """A Switch layer (Fedus et al. 2022, Figure 2): route each token to its top-1 expert, scale the
    expert's output by the router probability, drop tokens over the expert's capacity (output 0).

    Groups are the rows of the input (one sequence each, transformers' convention), or with
    ``capacity_scope="batch"`` all the tokens of the call (Mesh TensorFlow's group of a whole batch on
    one device, §2.2: "tokens per batch"); the capacity holds per group: ``capacity`` if given (tokens
    per expert and group, transformers' ``expert_capacity``), else
    ``ceil(capacity_factor · tokens / experts)`` with ``capacity_factor`` in training and
    ``eval_capacity_factor`` in evaluation (``None``: no token is dropped). ``reroute_overflow``: tokens
    over capacity at their first choice try their second choice ("No-Token-Left-Behind").

    After each forward pass ``self.stats`` holds a ``RouterStats`` (load-balancing and z losses).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        activation: nn.Module,
        *,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float | None = None,
        capacity: int | None = None,
        jitter_noise: float = 0.0,
        expert_dropout: float = 0.0,
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.0,
        reroute_overflow: bool = False,
        capacity_scope: str = "sequence",
    ):
        super().__init__()
        if capacity_scope not in ("sequence", "batch"):
            raise ValueError(f"capacity_scope must be 'sequence' or 'batch', got {capacity_scope!r}")
        self.capacity_scope = capacity_scope
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.capacity = capacity
        self.aux_loss_coef = aux_loss_coef
        self.z_loss_coef = z_loss_coef
        self.reroute_overflow = reroute_overflow
        self.router = SwitchRouter(d_model, num_experts, jitter_noise)
        self.experts = Experts(num_experts, d_model, d_ff, activation, expert_dropout)
        self.stats: RouterStats | None = None

    def group_capacity(self, tokens_per_group: int) -> int | None:
        if self.capacity is not None:
            return self.capacity
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        return None if factor is None else expert_capacity(tokens_per_group, self.num_experts, factor)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        per_sequence = len(shape) == 3 and self.capacity_scope == "sequence"
        groups, group_size = (shape[0], shape[1]) if per_sequence else (1, x.shape[0])
        logits = self.router(x)  # float32
        probs = torch.softmax(logits, dim=-1)
        gate, expert = probs.max(dim=-1)
        expert_index, gates = expert.unsqueeze(-1), gate.unsqueeze(-1)
        keep = torch.ones_like(expert_index, dtype=torch.bool)
        capacity = self.group_capacity(group_size)
        if capacity is not None:
            group = torch.arange(groups, device=x.device).repeat_interleave(group_size)
            rank, taken = capacity_rank(expert, group, self.num_experts, groups)
            keep = (rank < capacity).unsqueeze(-1)
            if self.reroute_overflow:  # No-Token-Left-Behind: overflow goes to the next-best expert
                second = probs.masked_fill(F.one_hot(expert, self.num_experts).bool(), -1.0).argmax(-1)
                kept_first = keep.squeeze(-1)
                occupied = torch.minimum(taken, torch.full_like(taken, capacity))
                # Only the overflowed tokens queue at their second choice, behind the first-choice tokens.
                second_group = torch.where(kept_first, groups, group)  # kept tokens: a dummy group
                rank2, _ = capacity_rank(second, second_group, self.num_experts, groups + 1,
                                         torch.cat([occupied, occupied.new_zeros(self.num_experts)]))
                moved = ~kept_first & (rank2 < capacity)
                expert_index = torch.where(moved, second, expert).unsqueeze(-1)
                gates = torch.where(moved, probs.gather(-1, second.unsqueeze(-1)).squeeze(-1), gate).unsqueeze(-1)
                keep = (kept_first | moved).unsqueeze(-1)
        # The combine weights go back to the model's dtype ("recast to bfloat16", §2.4).
        out = dispatch(x, expert_index, gates.to(x.dtype), keep, self.experts)

        grouped_probs = probs.view(groups, group_size, -1)
        balance = load_balancing_loss(grouped_probs, expert.view(groups, group_size))
        z_loss = router_z_loss(logits)
        self.stats = RouterStats(
            aux_loss=self.aux_loss_coef * balance + self.z_loss_coef * z_loss,
            losses={"load_balancing": balance, "router_z": z_loss},
            expert_load=F.one_hot(expert, self.num_experts).float().mean(0).detach(),
            dropped_fraction=1.0 - keep.float().mean().detach(),
            router_logits=logits.view(*shape[:-1], -1),
        )
        return out.view(shape)


# ----------------------------------------------------------------------------------------------
# The sparsely-gated MoE layer (Shazeer et al. 2017), flat or hierarchical
# ----------------------------------------------------------------------------------------------


def _group_rows(index: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stable order that sorts ``index`` (rows) by group, and the int32 end offset of each group."""
    order = torch.argsort(index, stable=True)
    counts = torch.zeros(num_groups, dtype=torch.long, device=index.device)
    counts = counts.scatter_add_(0, index, torch.ones_like(index))
    return order, torch.cumsum(counts, 0).to(torch.int32)


class NoisyTopKMoE(nn.Module):
    """The sparsely-gated mixture-of-experts layer (Shazeer et al. 2017, §2): y = Σ_i G(x)_i E_i(x) with
    the noisy top-k gate, applied to every token independently; experts are ``Experts`` (one ReLU hidden
    layer, no biases: Appendix C's [512·1024] + [1024·512] = 1M parameters each).

    ``num_groups=None``: the flat layer, one ``NoisyTopKGate`` with ``k`` over all experts. Else the
    hierarchical layer of Appendix B: a primary noisy top-``group_k`` gate over ``num_groups`` groups of
    b = experts / groups experts, each group with its own secondary noisy top-``k`` gate (computed only
    for the groups a token is sent to, as one grouped matmul):
    y_H = Σ_i Σ_j G_primary(x)_i · G_i(x)_j · E_{i,j}(x) (eq. 12). Expert (i, j) is ``i · b + j``.

    After each forward pass ``self.stats`` holds a ``RouterStats``: ``aux_loss`` =
    w_importance · CV(Importance)² + w_load · CV(Load)² (eq. 6-7 and 11; eq. 13-14 for the hierarchical
    layer), the two unweighted CV² in ``losses``, and ``expert_load``, the fraction of the (real) tokens
    each expert processed. ``mask`` (tokens,) leaves padding out of the statistics.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        k: int,
        activation: nn.Module,
        *,
        num_groups: int | None = None,
        group_k: int = 2,
        w_importance: float = 0.1,
        w_load: float = 0.1,
        expert_dropout: float = 0.0,
    ):
        super().__init__()
        self.num_experts, self.k, self.num_groups, self.group_k = num_experts, k, num_groups, group_k
        self.w_importance, self.w_load = w_importance, w_load
        if num_groups is None:
            self.gate = NoisyTopKGate(d_model, num_experts, k)
        else:
            if num_experts % num_groups:
                raise ValueError(f"NoisyTopKMoE: num_experts={num_experts} is not divisible by num_groups={num_groups}.")
            self.group_size = num_experts // num_groups
            if not 1 <= k <= self.group_size:
                raise ValueError(f"NoisyTopKMoE: k={k} must be in [1, experts per group={self.group_size}].")
            self.gate = NoisyTopKGate(d_model, num_groups, group_k)  # G_primary
            # The secondary gates' W_g and W_noise, (groups, d_model, b): grouped_linear's layout. Zeros, as
            # every gate of the paper (Appendix A).
            self.secondary_w_gate = nn.Parameter(torch.zeros(num_groups, d_model, self.group_size))
            self.secondary_w_noise = nn.Parameter(torch.zeros(num_groups, d_model, self.group_size))
        self.experts = Experts(num_experts, d_model, d_ff, activation, expert_dropout)
        self.stats: RouterStats | None = None

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        weight = x.new_ones(x.shape[0], dtype=torch.float32) if mask is None else mask.reshape(-1).float()
        gate = self.gate(x)
        if self.num_groups is None:
            expert_index, combine = gate.top_k_index, gate.top_k_gates
            importance = (gate.gates.float() * weight[:, None]).sum(0)
            load = (load_probabilities(gate, self.k) * weight[:, None]).sum(0)
        else:
            expert_index, combine, importance, load = self._hierarchical(x, gate, weight)
        keep = torch.ones_like(expert_index, dtype=torch.bool)
        out = dispatch(x, expert_index, combine.to(x.dtype), keep, self.experts)

        importance_cv, load_cv = cv_squared(importance), cv_squared(load)
        routed = torch.zeros(self.num_experts, device=x.device, dtype=torch.float32)
        routed = routed.scatter_add_(0, expert_index.reshape(-1),
                                     weight[:, None].expand_as(expert_index).reshape(-1))
        self.stats = RouterStats(
            aux_loss=self.w_importance * importance_cv + self.w_load * load_cv,
            losses={"importance": importance_cv, "load": load_cv},
            expert_load=(routed / weight.sum().clamp_min(1.0)).detach(),
            router_logits=gate.clean_logits.float().view(*shape[:-1], -1),
        )
        return out.view(shape)

    def _hierarchical(self, x: torch.Tensor, primary: NoisyTopKOutput, weight: torch.Tensor):
        """Appendix B: secondary gates for each (token, chosen group); eq. 12-14."""
        tokens, group_k, b = x.shape[0], self.group_k, self.group_size
        group = primary.top_k_index.reshape(-1)  # (tokens · group_k,), the groups G_primary chose
        order, offsets = _group_rows(group, self.num_groups)
        x_sorted = x[order // group_k]
        clean_sorted = grouped_linear(x_sorted, self.secondary_w_gate, offsets)
        std_sorted = F.softplus(grouped_linear(x_sorted, self.secondary_w_noise, offsets))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        secondary = noisy_top_k(clean_sorted[inverse], std_sorted[inverse], self.k, None, self.training)
        expert_index = (group[:, None] * b + secondary.top_k_index).view(tokens, group_k * self.k)
        primary_gate = primary.top_k_gates.reshape(-1, 1)
        combine = (primary_gate * secondary.top_k_gates).view(tokens, group_k * self.k)

        row_weight = weight.repeat_interleave(group_k)[:, None]  # each (token, group) row
        # eq. 13: Importance_H(X)_{i,j} = Σ_x G_primary(x)_i · G_i(x)_j
        importance = torch.zeros(self.num_groups, b, device=x.device, dtype=torch.float32)
        importance = importance.index_add(0, group, (primary_gate.float() * secondary.gates.float()) * row_weight)
        # eq. 14: Load_H(X)_{i,j} = Load_primary(X)_i · Load_i(X^(i))_j / |X^(i)|, X^(i) the tokens sent to group i
        load_primary = (load_probabilities(primary, group_k) * weight[:, None]).sum(0)
        load_secondary = torch.zeros(self.num_groups, b, device=x.device, dtype=torch.float32)
        load_secondary = load_secondary.index_add(0, group, load_probabilities(secondary, self.k) * row_weight)
        sent = torch.zeros(self.num_groups, device=x.device, dtype=torch.float32).index_add(0, group, row_weight[:, 0])
        load = load_primary[:, None] * load_secondary / sent.clamp_min(1.0)[:, None]
        return expert_index, combine, importance.reshape(-1), load.reshape(-1)
