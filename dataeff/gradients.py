"""Per-example LoRA gradients at the un-trained initialisation, reduced to their Gram matrix.

Why it is cheap. At LoRA's initialisation ``B = 0``, so for a LoRA layer ``y = W x + s * B A x``
(``s = alpha / r``) the gradient of ``A`` is exactly zero and the gradient of ``B`` for example
``i`` is ``gB_i = sum_t g_t u_t^T`` (shape ``out x r``), where ``u_t = A x_t`` is the input of
``lora_B`` at position ``t`` and ``g_t`` the gradient of example ``i``'s loss with respect to
``lora_B``'s output (which already carries the factor ``s``). So:

- one forward pass over a batch captures every ``u_t`` (forward hook on each ``lora_B``; its
  output, exactly zero, is replaced by a zero leaf tensor ``z`` that requires grad);
- one backward pass of ``sum_i L_i`` (``L_i`` = mean cross-entropy over example ``i``'s answer
  tokens) gives every ``g_t``: positions of different examples never mix, so ``g_t`` of a row is
  the gradient of that row's own loss. No base weight gets a gradient (all parameters are frozen),
  only activations do. Each module's gradient is turned into ``gB`` (``batch x out x r``) as soon
  as it is ready (a post-accumulate hook) and released: never all layers at once;
- the LM head runs only at the positions that predict answer tokens;
- examples are padded on the RIGHT (a causal model never attends to later pad positions, whose
  gradient is therefore exactly zero) and batched by length.

The zero ``A`` gradients add nothing to inner products or norms, so the Gram matrix over ``B``
gradients equals the reference's Gram matrix over all LoRA matrices.

Exact mode needs one fp32 row of ``sum_l out_l * r`` numbers per example (SmolLM2-135M, r=64:
9.95 M numbers, 40 MB per example; Llama-3.1-8B, r=64: 88 M numbers, 352 MB per example) when
examples are split into several batches, since pairs in different batches need both rows. Where the
rows go is planned from memory budgets (:func:`plan_gram`, recorded as a :class:`GramPlan`); every
plan gives the same Gram matrix to fp32 rounding:

- ``one-batch``: all examples in one batch (``batch_size >= n``): ``G`` is accumulated inside the
  hooks, module by module, and no rows are kept at all;
- ``memory``: rows in the device's memory, when they fit its budget (CUDA: the free memory left
  after the batch's activations);
- ``host``: (CUDA) rows copied to pinned host memory as they are made, read back in chunks;
- ``disk``: rows in one temporary file per LoRA module, written at their row offsets and read back
  in row chunks (pairs of chunks when a module's rows do not fit the read budget). The default on
  CPU, where the files sit in the page cache rather than the process's memory;
- ``passes``: when nothing holds all rows (1,024 examples of an 8B model: 360 GB), the output
  rows of the modules are split into column groups whose rows fit the device budget, and the data
  is run once per group, each pass keeping only its group's rows: exact, at the cost of one
  forward/backward over all examples per pass (``ceil(n * row_bytes / budget)`` passes).

A batch that runs out of CUDA memory is retried with half the batch size (the plan is made again);
the rows it had written are simply overwritten.

Projection mode (``projection_dim=k``) keeps, per example, only a seeded CountSketch of size
``k`` of its gradient (see :class:`CountSketch`: the output dimension of every module is hashed with
random signs into ``k // r`` buckets, independently per module, and the modules' sketches are
summed). Inner products are unbiased; each cosine gets a random error of order
``1 / sqrt(k // r)`` per module, averaged over the ~200 modules, and the median over all pairs
(CoS-Low) is steadier still. Measured on SmolLM2 (32 sports_understanding examples, r=64, seeds
0 and 1): ``k = 65536`` -> |CoS-Low error| 0.0008 and 0.0015; ``k = 16384`` -> 0.009 and 0.007;
``k = 4096`` -> 0.007 and 0.023. Memory: ``n x k`` fp64 plus the bucket tables (``sum_l out_l``
entries), i.e. no per-example full gradients.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dataeff.data import Example
from dataeff.defaults import GRAM_STORAGES
from dataeff.device_memory import available_host_memory, free_device_memory
from dataeff.errors import DataError
from dataeff.generation import length_batches
from dataeff.models import encode_prompt_answer, model_device
from dataeff.row_store import RowStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + gold answer; the answer is ``ids[n_prompt:]`` (at least one token)."""

    ids: list[int]
    n_prompt: int


def encode_examples(tokenizer, examples: Sequence[Example], chat_template: bool) -> list[EncodedExample]:
    """Encode labeled examples with :func:`dataeff.models.encode_prompt_answer`.

    Raises:
        DataError: an example has no answer, or its answer encodes to no tokens (names the example).
    """
    out = []
    for i, ex in enumerate(examples):
        name = ex.id if ex.id is not None else i
        if ex.answer is None or not ex.answer.strip():
            raise DataError(f"example {name}: no gold answer; CoS-Low needs labeled examples (label it or drop it)")
        ids, n_prompt = encode_prompt_answer(tokenizer, ex.prompt, ex.answer, chat_template)
        if len(ids) <= n_prompt:
            raise DataError(f"example {name}: the answer {ex.answer!r} encodes to no tokens; fix the label")
        if n_prompt < 1:
            raise DataError(f"example {name}: empty prompt; fill it in or drop the row")
        out.append(EncodedExample(ids=list(ids), n_prompt=n_prompt))
    return out


class LoraLayerLike(Protocol):
    """What the gradient code reads from a peft ``LoraLayer`` (:func:`lora_layers` checks A and B are Linear)."""

    lora_A: Mapping[str, torch.nn.Linear]
    lora_B: Mapping[str, torch.nn.Linear]
    scaling: Mapping[str, float]
    base_layer: torch.nn.Module


def lora_layers(peft_model, adapter: str = "default") -> list[tuple[str, LoraLayerLike]]:
    """``(name, peft LoRA layer)`` of every vanilla LoRA linear layer of ``peft_model``, in module order.

    Raises:
        ValueError: no LoRA layer; a LoRA variant (DoRA, ...) whose gradient is not ``g u^T``; or a
            ``B`` that is not zero (the adapter is not at its un-trained initialisation).
    """
    from peft.tuners.lora import LoraLayer

    found: list[tuple[str, LoraLayerLike]] = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_B", {}):
            continue
        if adapter in getattr(module, "lora_variant", {}):
            raise ValueError(
                f"{name}: LoRA variant {type(module.lora_variant[adapter]).__name__} is not supported; "
                "use plain LoRA (no DoRA) for CoS-Low"
            )
        lora_a, lora_b = module.lora_A[adapter], module.lora_B[adapter]
        if not (isinstance(lora_a, torch.nn.Linear) and isinstance(lora_b, torch.nn.Linear)):
            raise ValueError(f"{name}: only LoRA on linear layers is supported, got {type(lora_b).__name__}")
        if torch.count_nonzero(lora_b.weight).item():
            raise ValueError(
                f"{name}: LoRA B is not zero; gradients must be taken at the un-trained initialisation "
                "(attach a fresh adapter)"
            )
        found.append((name, cast(LoraLayerLike, module)))  # peft types lora_A/lora_B as ModuleDicts
    if not found:
        raise ValueError(
            f"the model has no LoRA layers with adapter {adapter!r}; attach one with dataeff.models.attach_lora"
        )
    return found


class CountSketch:
    """Seeded CountSketch of the output dimension of each module's ``out x r`` gradient.

    Every output row ``o`` of module ``l`` goes, with a random sign ``s_l(o)``, to one of ``k1``
    random buckets ``h_l(o)``: the sketch of ``gB`` is ``S_l gB`` (``k1 x r``), with
    ``E[S_l^T S_l] = I`` so inner products are unbiased. The sketches of all modules (independent
    tables) are summed into one ``k1 x r`` block per example: a sketch of the concatenated gradient
    of size ``k = k1 * r``. It is applied to ``g`` before the per-example product, so it costs less
    than the exact gradient.

    Args:
        out_sizes: output size of every module, in module order.
        rank: LoRA rank ``r`` (size of the unsketched dimension).
        k: requested sketch size; ``k1 = max(1, k // rank)`` buckets, the real size is ``k1 * rank``.
        seed: seed of the bucket and sign tables.
        device: where the tables live.
    """

    def __init__(self, out_sizes: Sequence[int], rank: int, k: int, seed: int, device: torch.device):
        if k < 1:
            raise ValueError(f"projection_dim must be >= 1, got {k}")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.buckets_per_row = max(1, int(k) // int(rank))
        self.rank = int(rank)
        self.k = self.buckets_per_row * self.rank
        self.buckets = [torch.randint(0, self.buckets_per_row, (n,), generator=gen).to(device) for n in out_sizes]
        self.signs = [(torch.randint(0, 2, (n,), generator=gen) * 2 - 1).float().to(device) for n in out_sizes]

    def sketch(self, module: int, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(b, k)`` sketches of ``sum_t g_t u_t^T`` for ``g`` ``(b, T, out)`` and ``u`` ``(b, T, r)`` (fp32)."""
        b, t, _ = g.shape
        gs = torch.zeros((b, t, self.buckets_per_row), dtype=torch.float32, device=g.device)
        gs.index_add_(2, self.buckets[module], g * self.signs[module])
        return torch.bmm(gs.transpose(1, 2), u).reshape(b, -1)


def _answer_loss(
    base_model, input_ids: torch.Tensor, attention: torch.Tensor, batch: Sequence[EncodedExample]
) -> torch.Tensor:
    """Sum over the batch of each example's mean cross-entropy on its answer tokens.

    The input embeddings are a leaf that requires grad (so every activation gets a gradient while
    no parameter does); the LM head runs only at the positions that predict answer tokens.
    """
    decoder = base_model.get_decoder()
    head = base_model.get_output_embeddings()
    embeds = base_model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    hidden = decoder(inputs_embeds=embeds, attention_mask=attention, use_cache=False).last_hidden_state
    rows: list[int] = []
    cols: list[int] = []
    weights: list[float] = []
    for b, ex in enumerate(batch):
        n_answer = len(ex.ids) - ex.n_prompt
        rows.extend([b] * n_answer)
        cols.extend(range(ex.n_prompt - 1, len(ex.ids) - 1))  # position t predicts token t + 1
        weights.extend([1.0 / n_answer] * n_answer)
    dev = hidden.device
    rows_t = torch.tensor(rows, device=dev)
    cols_t = torch.tensor(cols, device=dev)
    logits = head(hidden[rows_t, cols_t]).float()
    cap = getattr(base_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    targets = input_ids[rows_t, cols_t + 1]
    nll = F.cross_entropy(logits, targets, reduction="none")
    return (nll * torch.tensor(weights, device=dev)).sum()


STORAGES = GRAM_STORAGES  # where the per-example rows go (one home: dataeff.defaults)
DEFAULT_READ_CHUNK = 256 * 2**20  # least bytes of stored rows read back at once when no budget is given
MIN_PASS_BUDGET = 256 * 2**20  # least device bytes planned for rows on CUDA
MAX_DISK_PASSES = 4  # on CUDA, more recomputation passes than this cost more than spilling rows to disk


@dataclass(frozen=True)
class ColumnSlice:
    """Output rows ``lo:hi`` of module ``module``'s ``out x rank`` gradient: ``(hi - lo) * rank`` columns of a row."""

    module: int
    lo: int
    hi: int
    rank: int

    @property
    def size(self) -> int:
        return (self.hi - self.lo) * self.rank


@dataclass
class GramPlan:
    """How :func:`lora_gradient_gram` keeps the per-example gradient rows (see :func:`plan_gram`).

    Attributes:
        storage: ``"one-batch"`` (all examples in one batch: the Gram matrix is accumulated inside the
            hooks, no rows kept), ``"memory"`` (rows in the compute device's memory), ``"host"``
            (rows in host memory, pinned when the device is CUDA), ``"disk"`` (rows in temporary
            files), ``"passes"`` (the data is run once per group of columns, each group's rows kept
            in device memory: exact, costs one forward/backward over all examples per pass) or
            ``"sketch"`` (projection mode).
        batch_size: examples per forward/backward pass.
        passes: the column groups, one per pass over the data (one group unless ``"passes"``).
        row_bytes: fp32 bytes of one example's full gradient row.
        n: number of examples.
        memory_budget: bytes the rows may take in the device's memory (``None``: no limit given).
        oom_retries: how often the batch size was halved after the device ran out of memory.
    """

    storage: str
    batch_size: int
    passes: list[list[ColumnSlice]]
    row_bytes: int
    n: int
    memory_budget: int | None = None
    oom_retries: int = 0

    def summary(self) -> dict:
        """Flat JSON-ready description (what :class:`dataeff.coslow.CosLowResult` records)."""
        return {
            "storage": self.storage,
            "batch_size": self.batch_size,
            "passes": len(self.passes),
            "rows_mb": round(self.n * self.row_bytes / 2**20, 3),
            "memory_budget_mb": None if self.memory_budget is None else round(self.memory_budget / 2**20, 3),
            "oom_retries": self.oom_retries,
        }


def _full_slices(modules: Sequence[tuple[int, int]]) -> list[ColumnSlice]:
    return [ColumnSlice(m, 0, out, r) for m, (out, r) in enumerate(modules)]


def _column_passes(n: int, modules: Sequence[tuple[int, int]], budget: int) -> list[list[ColumnSlice]]:
    """Modules' output rows split into consecutive groups whose ``n`` fp32 rows fit ``budget`` bytes each
    (at least one output row per group, so a budget below one output row still makes progress)."""
    capacity = max(1, int(budget) // (4 * max(n, 1)))  # fp32 numbers per example per pass
    passes: list[list[ColumnSlice]] = []
    current: list[ColumnSlice] = []
    used = 0
    for m, (out, r) in enumerate(modules):
        lo = 0
        while lo < out:
            rows = (capacity - used) // r
            if rows < 1:
                if current:
                    passes.append(current)
                    current, used = [], 0
                    continue
                rows = 1
            hi = min(out, lo + rows)
            current.append(ColumnSlice(m, lo, hi, r))
            used += (hi - lo) * r
            lo = hi
    if current:
        passes.append(current)
    return passes


def plan_gram(
    n: int,
    modules: Sequence[tuple[int, int]],
    batch_size: int,
    *,
    device_type: str = "cpu",
    storage: str = "auto",
    memory_budget: int | None = None,
    host_budget: int = 0,
    disk_budget: int = 0,
    sketch: bool = False,
) -> GramPlan:
    """Where the per-example gradient rows go (pure but for the CPU fall-back budget, read from the host).

    Args:
        n: number of examples.
        modules: ``(out_features, rank)`` of every LoRA ``B``, in module order.
        batch_size: examples per forward/backward pass.
        device_type: ``"cpu"`` or ``"cuda"``.
        storage: ``"auto"`` or one of :data:`STORAGES` to force it (tests, power users).
        memory_budget: bytes the rows may take in the compute device's memory. ``None`` on CPU: the
            rows go to disk as before this option existed (page cache, not the process's memory),
            with a quarter of the available host memory as the fall-back budget.
        host_budget: bytes of host memory (pinned) rows may take when the device is CUDA.
        disk_budget: bytes of free temporary disk space rows may take.
        sketch: projection mode (the rows are ``k`` numbers, always kept in memory).

    ``"auto"``: one batch when ``batch_size >= n`` (no rows); else, all rows being ``n * row_bytes``:
    CPU, no budget given: disk, else memory, else passes; otherwise: memory if they fit
    ``memory_budget``, else host (CUDA), else (CUDA) passes when at most :data:`MAX_DISK_PASSES`, else
    disk, else passes with ``memory_budget`` per pass.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full = _full_slices(modules)
    row_bytes = 4 * sum(s.size for s in full)
    total = n * row_bytes
    if sketch:
        return GramPlan("sketch", batch_size, [full], row_bytes, n, memory_budget)
    if storage == "auto":
        if batch_size >= n:
            storage = "one-batch"
        elif device_type == "cpu" and memory_budget is None:
            fallback = max(available_host_memory() // 4, 1)
            storage = "disk" if total <= disk_budget else "memory" if total <= fallback else "passes"
            memory_budget = fallback if storage == "passes" else None
        elif total <= (memory_budget if memory_budget is not None else total):
            storage = "memory"
        elif device_type == "cuda" and total <= host_budget:
            storage = "host"
        else:
            assert memory_budget is not None
            n_passes = len(_column_passes(n, modules, memory_budget))
            disk_first = device_type != "cuda" or n_passes > MAX_DISK_PASSES
            storage = "disk" if disk_first and total <= disk_budget else "passes"
    if storage == "one-batch" and batch_size < n:
        raise ValueError(f"storage 'one-batch' needs batch_size >= n ({batch_size} < {n})")
    if storage == "passes":
        budget = memory_budget if memory_budget is not None else max(available_host_memory() // 4, 1)
        return GramPlan("passes", batch_size, _column_passes(n, modules, budget), row_bytes, n, budget)
    return GramPlan(storage, batch_size, [full], row_bytes, n, memory_budget)


class _GramAccumulator:
    """Receives per-module blocks of per-example gradients of one pass and turns them into a Gram matrix.

    Rows are filled in processing order (``start:stop`` slices); :func:`lora_gradient_gram` undoes the
    order. Contributions of a batch that is inside the hooks (one-batch and sketch) are kept aside
    until :meth:`commit`, so a batch abandoned after an out-of-memory error adds nothing.
    """

    def __init__(
        self,
        n: int,
        plan: GramPlan,
        slices: Sequence[ColumnSlice],
        device: torch.device,
        gram: torch.Tensor,
        sketch: CountSketch | None,
    ):
        self.n, self.plan, self.sketch, self.gram = n, plan, sketch, gram
        self.by_module: dict[int, list[tuple[int, ColumnSlice]]] = {}
        for index, s in enumerate(slices):
            self.by_module.setdefault(s.module, []).append((index, s))
        self.store: RowStore | None = None
        self.sketch_rows: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None
        if sketch is not None:
            self.sketch_rows = torch.zeros((n, sketch.k), dtype=torch.float64, device=device)
        elif plan.storage != "one-batch":
            kind = "memory" if plan.storage == "passes" else plan.storage
            self.store = RowStore(n, [s.size for s in slices], kind, device)
        self.start = self.stop = 0

    @property
    def modules(self) -> list[int]:
        return sorted(self.by_module)

    def begin(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.pending = None

    def add(self, module: int, g: torch.Tensor, u: torch.Tensor, scale: float) -> None:
        """Add module ``module``'s gradients ``scale * sum_t g_t u_t^T`` of the current batch.

        ``g``: ``(batch, T, out)`` output gradients; ``u``: fp32 ``(batch, T, r)`` inputs of lora_B.
        """
        if self.sketch is not None:
            part = self.sketch.sketch(module, g.float(), u).mul_(scale).double()
            self.pending = part if self.pending is None else self.pending.add_(part)
            return
        for index, s in self.by_module.get(module, ()):
            gs = g[:, :, s.lo : s.hi].float()
            block = torch.bmm(gs.transpose(1, 2), u).mul_(scale).reshape(g.shape[0], -1)
            if self.store is not None:
                self.store.write(index, self.start, block)
            else:
                part = (block @ block.T).double()
                self.pending = part if self.pending is None else self.pending.add_(part)

    def commit(self) -> None:
        """The current batch finished its backward pass: keep what it added."""
        if self.pending is not None:
            if self.sketch_rows is not None:
                self.sketch_rows[self.start : self.stop] = self.pending
            else:
                self.gram[self.start : self.stop, self.start : self.stop] += self.pending
        self.pending = None

    def finish(self, chunk_bytes: int) -> None:
        """Add this pass's rows to the Gram matrix and free them."""
        try:
            if self.sketch_rows is not None:
                self.gram += self.sketch_rows @ self.sketch_rows.T
            elif self.store is not None:
                self.store.add_gram(self.gram, chunk_bytes)
        finally:
            self.close()

    def close(self) -> None:
        self.sketch_rows = None
        self.pending = None
        if self.store is not None:
            self.store.close()
            self.store = None


class _OutOfMemory(Exception):
    """A batch did not fit the device (internal: :func:`lora_gradient_gram` retries with half the batch)."""


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return bool(oom is not None and isinstance(exc, oom))


def lora_gradient_gram(peft_model, tokenizer, examples: Sequence[Example], **options: Any) -> np.ndarray:
    """Gram matrix of the examples' LoRA gradients at the un-trained initialisation.

    :func:`lora_gradient_gram_with_plan` without the plan; ``options`` are its keyword arguments.

    Returns:
        ``G``, float64 array of shape ``(n, n)``: ``G[i, j] = <grad_i, grad_j>`` over all LoRA matrices
        (``<sketch_i, sketch_j>`` in projection mode).
    """
    return lora_gradient_gram_with_plan(peft_model, tokenizer, examples, **options)[0]


def _default_budgets(peft_model, device: torch.device, batch_size: int, max_len: int, modules) -> dict:
    """Budgets of :func:`plan_gram` for this device when the caller gave none."""
    import shutil

    from dataeff.device_memory import SAFETY, ModelShape, available_host_memory, coslow_bytes_per_example

    try:
        disk = int(shutil.disk_usage(tempfile.gettempdir()).free * 0.8)
    except OSError:
        disk = 0
    budgets: dict = {"disk_budget": disk, "host_budget": 0, "memory_budget": None}
    free = free_device_memory(device)
    if free is not None:
        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        shape = ModelShape.of(base)
        dtype_bytes = next(base.parameters()).element_size()
        rank = max(r for _, r in modules)
        activations = batch_size * coslow_bytes_per_example(shape, max_len, dtype_bytes, rank, len(modules)) * SAFETY
        biggest_block = 2 * batch_size * max(out * r for out, r in modules) * 4
        # at least MIN_PASS_BUDGET: a nearly full device would otherwise plan thousands of passes
        budgets["memory_budget"] = max(int(0.9 * free - activations - biggest_block - 2**30), MIN_PASS_BUDGET)
        budgets["host_budget"] = available_host_memory() // 2
    return budgets


def lora_gradient_gram_with_plan(
    peft_model,
    tokenizer,
    examples: Sequence[Example],
    *,
    chat_template: bool = False,
    batch_size: int | None = 8,
    projection_dim: int | None = None,
    seed: int = 0,
    progress: bool = True,
    adapter: str = "default",
    memory_budget: int | None = None,
    storage: str = "auto",
) -> tuple[np.ndarray, GramPlan]:
    """Gram matrix of the examples' LoRA gradients at the un-trained initialisation.

    Args:
        peft_model: a causal LM wrapped with fresh LoRA adapters (``B = 0``), e.g. from
            :func:`dataeff.models.attach_lora`. LoRA dropout is ignored (as in eval mode).
        tokenizer: its tokenizer.
        examples: ``n`` labeled examples.
        chat_template: encode prompts as a user turn (see :func:`dataeff.models.encode_prompt_answer`).
        batch_size: examples per forward/backward pass (default 8); ``>= n`` keeps no per-example rows;
            ``None``: chosen for the device (:func:`dataeff.device_memory.coslow_batch_size`, 8 on CPU).
        projection_dim: ``None`` for the exact Gram matrix; ``k`` for a CountSketch of size ``k``.
        seed: seed of the sketch (projection mode only).
        progress: tqdm bar over examples (times passes).
        adapter: peft adapter name.
        memory_budget: bytes the per-example rows may take in the device's memory (``None``: CUDA's
            free memory after the batch's activations; CPU: rows go to disk as before). Rows beyond
            it go to host memory, disk, or several passes over the data (:func:`plan_gram`).
        storage: force a storage of :data:`STORAGES` (default ``"auto"``).

    Returns:
        ``(G, plan)``: ``G``, float64 array of shape ``(n, n)``, ``G[i, j] = <grad_i, grad_j>`` over all
        LoRA matrices (``<sketch_i, sketch_j>`` in projection mode); ``plan``, the :class:`GramPlan`
        followed (storage, batch size, passes).
    """
    encoded = encode_examples(tokenizer, examples, chat_template)
    n = len(encoded)
    if n == 0:
        return np.zeros((0, 0)), GramPlan("one-batch", 1, [], 0, 0)
    device = model_device(peft_model)
    layers = lora_layers(peft_model, adapter)
    modules = [(m.lora_B[adapter].out_features, m.lora_B[adapter].in_features) for _, m in layers]
    lengths = [len(e.ids) for e in encoded]
    if batch_size is None:
        from dataeff.device_memory import coslow_batch_size

        batch_size = coslow_batch_size(
            peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model,
            lengths,
            max(r for _, r in modules),
            len(modules),
        )
        log.info("CoS-Low: batch size %d chosen for %s", batch_size, device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sketch = None
    if projection_dim:
        ranks = {r for _, r in modules}
        if len(ranks) != 1:
            raise ValueError(f"projection mode needs one LoRA rank for every layer, got {sorted(ranks)}")
        sketch = CountSketch([out for out, _ in modules], ranks.pop(), projection_dim, seed, device)
    retries = 0
    while True:
        budgets = _default_budgets(peft_model, device, batch_size, max(lengths), modules)
        if memory_budget is not None:
            budgets["memory_budget"] = memory_budget
        plan = plan_gram(
            n, modules, batch_size, device_type=device.type, storage=storage, sketch=sketch is not None, **budgets
        )
        plan.oom_retries = retries
        if plan.storage not in ("one-batch", "sketch"):
            log.info("CoS-Low gradient rows: %s", plan.summary())
        try:
            gram = _run_plan(peft_model, tokenizer, encoded, layers, plan, sketch, device, adapter, progress)
            return gram, plan
        except _OutOfMemory:
            if batch_size <= 1:
                raise
        # outside the except block: the failed batch's tensors are no longer referenced by the traceback
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        retries += 1
        warnings.warn(
            f"CoS-Low: batch size {batch_size} ran out of device memory; retrying with {batch_size // 2}",
            stacklevel=2,
        )
        batch_size //= 2


def _run_plan(peft_model, tokenizer, encoded, layers, plan: GramPlan, sketch, device, adapter, progress) -> np.ndarray:
    """Every pass of ``plan`` over the batches; the ``(n, n)`` Gram matrix in input order."""
    n = len(encoded)
    base_model = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    gram = torch.zeros((n, n), dtype=torch.float64, device=device)
    # bytes of stored rows read back at once: the device budget, else an eighth of the host's free memory
    chunk = plan.memory_budget if plan.memory_budget else max(DEFAULT_READ_CHUNK, available_host_memory() // 8)
    mask: dict = {}
    batches = length_batches([len(e.ids) for e in encoded], plan.batch_size)
    order = [i for b in batches for i in b]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    saved_flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    bar = tqdm(total=n * len(plan.passes), desc="lora gradients", unit="ex", disable=not progress)

    def make_hook(index: int, layer, acc: _GramAccumulator):
        lora_a = layer.lora_A[adapter]
        scale = float(layer.scaling[adapter])

        def forward_hook(module, inputs, output):
            # u_t = A x_t (no grad needed: A's gradient is zero at B = 0), padding rows zeroed
            with torch.no_grad():
                u = (lora_a(inputs[0].to(lora_a.weight.dtype)) * mask["rows"].to(lora_a.weight.dtype)).float()

            def on_grad(g):  # g = dL/dy (batch, T, out); the gradient of lora_B's output is scale * g
                acc.add(index, g, u, scale)

            if output.requires_grad:
                output.register_hook(on_grad)

        return forward_hook

    try:
        for p, _ in saved_flags:
            p.requires_grad_(False)
        with peft_model.disable_adapter() if hasattr(peft_model, "disable_adapter") else contextlib.nullcontext():
            for slices in plan.passes:
                acc = _GramAccumulator(n, plan, slices, device, gram, sketch)
                handles = [
                    layers[m][1].base_layer.register_forward_hook(make_hook(m, layers[m][1], acc)) for m in acc.modules
                ]
                try:
                    done = 0
                    for batch_idx in batches:
                        batch = [encoded[i] for i in batch_idx]
                        width = max(len(e.ids) for e in batch)
                        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                        attention = torch.zeros((len(batch), width), dtype=torch.long)
                        for row, ex in enumerate(batch):  # right padding: pads come after every real token
                            input_ids[row, : len(ex.ids)] = torch.tensor(ex.ids)
                            attention[row, : len(ex.ids)] = 1
                        input_ids, attention = input_ids.to(device), attention.to(device)
                        mask["rows"] = attention.unsqueeze(-1)
                        acc.begin(done, done + len(batch))
                        try:
                            with torch.enable_grad():
                                _answer_loss(base_model, input_ids, attention, batch).backward()
                        except Exception as exc:
                            if _is_oom(exc):
                                raise _OutOfMemory() from exc
                            raise
                        acc.commit()
                        done += len(batch)
                        bar.update(len(batch))
                    acc.finish(chunk)
                finally:
                    for h in handles:
                        h.remove()
                    acc.close()
    finally:
        bar.close()
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        mask.clear()
    inverse = np.argsort(np.asarray(order))
    return gram.cpu().numpy()[np.ix_(inverse, inverse)]
