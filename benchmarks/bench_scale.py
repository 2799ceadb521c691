"""Memory of one LoRA training step at the real Wan shapes: measured on the Wan2.1-T2V-1.3B transformer on this CPU,
and estimated per GPU for Wan2.1 14B at 480x832x81 on 8, 16 and 32 GPUs.

    python benchmarks/bench_scale.py              # ~13 minutes on two shared cores; needs ~12 GB of free memory
    python benchmarks/bench_scale.py --layers 2   # the same at 2 layers (a quick check of the script itself)

**Measured (1.3B).** The transformer is built from Wan2.1-T2V-1.3B's ``config.json`` (``WAN_1_3B``: 30 layers,
12 heads x 128, FFN 8960, text dim 4096; random weights, no download). As ``from_pretrained(torch_dtype=bf16)``
loads it, the modules of ``WanTransformer3DModel._keep_in_fp32_modules`` stay float32 in the bf16 setups. The policy
is built as the stages build it (``vpt.train.policy.new_policy``: peft LoRA, rank 8, ``DEFAULT_LORA_TARGETS``; peft
keeps the adapter float32 over a bf16 base), the optimizer by ``vpt.train.optim.build_optimizer`` (AdamW). One
step is the loss, its backward and the AdamW step, on one latent ``[1, 16, 4, 16, 32]`` (13 frames at 128x256:
4 x 8 x 16 = 512 tokens after the (1, 2, 2) patch) with random text embeddings ``[1, 512, 4096]`` (WanPipeline's
text length) of

- ``sft``: vpt's flow-matching loss (``vpt.stages.sft.FlowMatchingTask`` on a ``ClipBatch``), and
- ``grpo-step``: vpt's GRPO loss (``vpt.stages.grpo.GrpoLoss`` on a ``RolloutBatch`` of one recorded state;
  ``GrpoOptions`` defaults: no KL term, so one forward; guidance 1),

in four setups: (a) float32 weights; (b) bf16 frozen weights, LoRA float32, computed as ``--dtype bf16
--mixed-precision bf16`` trains: under bf16 autocast, with the LoRA layers fed their bf16 inputs as the harness feeds
them (``peft.helpers.disable_input_dtype_casting``; peft would otherwise keep a float32 copy of every targeted
layer's input for the backward, and the rest of the step would shrink by a quarter only); (c) (b) with diffusers'
gradient checkpointing (``enable_gradient_checkpointing()``, each block recomputed in backward); (d) (c) sharded
over 2 processes (gloo, CPU) with FSDP2 as the harness shards (``vpt.distributed.shard_model``: ``fully_shard`` on
each transformer block and on the embedders and output projection beside them, then on the transformer), each
process training its own sample. Each setup and loss runs in its
own process(es), so peaks do not mix.

*How peak memory is measured.* The CPU allocator keeps no peak, and RSS counts freed pages the allocator keeps and
the libraries' own memory. ``LiveBytes`` (below) is a ``TorchDispatchMode`` that sees every tensor an operator
returns, keeps a weak reference to its storage and adds the storage's bytes while it lives (a callback subtracts
them when the storage is freed); ``UntypedStorage.resize_``, which FSDP2 uses to allocate and free the unsharded
parameters and which bypasses dispatch, is wrapped for the time of the step. The peak is the largest sum after any
operator: what a caching allocator would report as ``max_memory_allocated`` without its rounding, and without the
scratch memory a kernel allocates and frees inside itself. Tensors that exist before the step (parameters, buffers,
the batch) are registered first. ``check_tracker`` validates it on a case computed by hand: a ``Linear(256, 128)``
(131,584 parameter bytes) and its input (32 x 256 x 4 = 32,768 bytes), then under ``no_grad`` ``y = linear(x)``,
``z = y * 2``, ``del y``, ``w = z + 1`` (each 32 x 128 x 4 = 16,384 bytes): the peak must be 164,352 + 2 x 16,384
(y and z alive together) and the live bytes at the end the same (z and w); then a backward and an AdamW step, which
must leave gradients (131,584) and AdamW's two moments (2 x 131,584) and step counters (2 x 4 bytes). The script
stops if either figure is off by one byte. ``torch.distributed._tools.mem_tracker.MemTracker`` (which
categorises PARAM/GRAD/ACT/...) was the first candidate; on torch 2.13 it cannot track a LoRA model: on the first
module forward it calls ``register_hook`` on every parameter and raises "cannot register a hook on a tensor that
doesn't require gradient" for the frozen base weights.

*Weights and the rest.* ``weights`` are the bytes of the parameters and buffers each process holds between steps
(under FSDP2 its shards: the local tensors of the DTensor parameters); ``rest`` is the peak minus them:
activations, gradients, AdamW state, the batch and, under FSDP2, the all-gathered unsharded parameters of the blocks
being computed and the communication buffers.

*FSDP2 with mixed dtypes.* Every block then holds bf16 frozen weights, float32 frozen norms and
``scale_shift_table`` (kept float32 as ``from_pretrained`` keeps them) and float32 LoRA parameters, and
``fully_shard`` accepts them as one group on torch 2.13: its all-gather copies parameters of different dtypes into
one uint8 buffer (``foreach_all_gather``), and the one check on dtypes (``FSDPParamGroup._init_mp_dtypes``, "FSDP
expects uniform original parameter dtype") covers only the parameters that require gradients, which are all float32
LoRA parameters. So no LoRA module needs a group of its own.

**Estimated (14B, per GPU).** ``WAN_14B`` (40 layers, 40 heads x 128, FFN 13824) at 480x832x81: latent
``[16, 21, 60, 104]``, 21 x 30 x 52 = 32,760 tokens. Built on the meta device (no memory), bf16 with the float32
modules as above and the LoRA as above, run as (b) runs (bf16 autocast); with FSDP2 over all G GPUs:

- weights: the bf16/float32 parameter bytes and the float32 LoRA bytes, / G (buffers: the RoPE tables, unsharded);
- LoRA gradients + AdamW: 3 x the LoRA bytes (gradient, two moments), / G;
- all-gather: two blocks unsharded at once (the one computed and the one prefetched), not divided by G;
- activations per sample: ``LiveBytes`` on the meta device measures the peak above the weights of the loss's
  forward and backward (no optimizer) of the transformer with 2 and with 3 blocks at the full 32,760 tokens and 512
  text tokens; the difference is one block's share, extrapolated linearly to 40 blocks:
  ``A(40) = A(3) + 37 (A(3) - A(2))`` (not from 1 block: with checkpointing, A(1) peaks at another point of the
  step, and A(2) - A(1) is three times A(3) - A(2); A(4) - A(3) = A(3) - A(2) was checked for both). On the meta
  device ``scaled_dot_product_attention`` takes the math path, which keeps the full attention matrix (N^2); the
  estimate replaces it by the flash-attention op (``_scaled_dot_product_flash_attention_for_cpu``, whose meta
  kernel exists), which saves, as FlashAttention does
  on GPUs, only the output and the log-sum-exp. Without checkpointing one block's share is its saved activations;
  with it, its input (kept for the recompute), the one recomputed block then being in the intercept;
- sft: one forward with gradients; dpo: two (winner and loser; the reference forward runs without gradients and
  keeps nothing, so it adds only one block's working memory, not counted); grpo-step: one state per micro-batch,
  one forward, and with classifier-free guidance (a negative prompt) two forwards with gradients.

The per-GPU total is weights + LoRA state + all-gather + activations of one sample (micro-batch 1), without the
allocator's fragmentation, the CUDA context or the text encoder and VAE (not resident during training steps).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import unittest.mock
from contextlib import contextmanager

import torch
from peft.helpers import disable_input_dtype_casting
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary, weakref

# diffusers WanTransformer3DModel configs of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-T2V-14B-Diffusers
# (transformer/config.json of each release).
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
LATENT = (1, 16, 4, 16, 32)  # 13 frames at 128x256: 4 x 8 x 16 = 512 tokens
LATENT_14B = (1, 16, 21, 60, 104)  # 81 frames at 480x832
LORA_RANK, LORA_ALPHA = 8, 16.0
SETUPS = {"a": "(a) fp32, no checkpointing", "b": "(b) bf16 base+autocast", "c": "(c) bf16 + checkpointing",
          "d": "(d) (c) + FSDP2 x2, per process"}
LOSSES = ("sft", "grpo-step")
GiB = 2**30


class LiveBytes(TorchDispatchMode):
    """Bytes of the live tensor storages (those registered with :meth:`track` and every one an operator returns
    inside the mode), and their peak since the mode was entered."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._sizes = WeakIdKeyDictionary()  # storage -> (its counted bytes in a cell, the weak reference)
        self._resize = torch.UntypedStorage.resize_

    def track(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            for storage in get_untyped_storages(tensor):
                self._count(storage)

    def _count(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        known = self._sizes.get(storage)
        if known is None:
            cell = [size]
            self._sizes[storage] = (cell, weakref.ref(storage, lambda _, cell=cell: self._free(cell)))
            self.live += size
        else:
            self.live += size - known[0][0]
            known[0][0] = size
        self.peak = max(self.peak, self.live)

    def _free(self, cell: list[int]) -> None:
        self.live -= cell[0]

    def __enter__(self):
        original, tracker = self._resize, self

        def resize_(storage, size):
            original(storage, size)
            if storage in tracker._sizes:
                tracker._count(storage)

        torch.UntypedStorage.resize_ = resize_
        self.peak = self.live
        return super().__enter__()

    def __exit__(self, *args):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*args)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor

        if DTensor in types:  # let DTensor unwrap to its local tensors, which come back through here
            return NotImplemented
        out = func(*args, **(kwargs or {}))
        self.track(*(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)))
        return out


def check_tracker() -> None:
    """Stop unless :class:`LiveBytes` gives the hand-computed bytes of a Linear's forward, backward and AdamW step
    (the module docstring shows the arithmetic)."""
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(256, 128), torch.randn(32, 256)
    params, activation = 128 * 256 * 4 + 128 * 4, 32 * 128 * 4
    tracker = LiveBytes()
    tracker.track(*linear.parameters(), x)
    with tracker, torch.no_grad():
        y = linear(x)
        z = y * 2
        del y
        w = z + 1
    expected = params + x.nbytes + 2 * activation
    if (tracker.peak, tracker.live) != (expected, expected):
        raise SystemExit(f"LiveBytes is off: peak {tracker.peak}, live {tracker.live}, expected {expected} for both")
    del z, w
    optimizer = torch.optim.AdamW(linear.parameters())
    with tracker:
        linear(x).square().sum().backward()
        optimizer.step()
    expected = params + x.nbytes + params + 2 * params + 2 * 4
    if tracker.live != expected:
        raise SystemExit(f"LiveBytes is off after the AdamW step: {tracker.live} bytes live, expected {expected}")


def keep_in_fp32(name: str, keep: list[str]) -> bool:
    """Whether ``from_pretrained`` keeps the parameter ``name`` float32 in a bf16 load (diffusers' rule: one of the
    module names in ``_keep_in_fp32_modules`` is a part of the dotted name)."""
    return any(part in name.split(".") for part in keep)


def build_transformer(config: dict, dtype: torch.dtype):
    """A ``WanTransformer3DModel`` of ``config`` with random weights in ``dtype``, the float32 modules kept float32
    as ``from_pretrained(torch_dtype=dtype)`` keeps them, on the current default device."""
    from diffusers import WanTransformer3DModel

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the dtype: a float32 build first would hold twice the memory
    try:
        transformer = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(default)
    keep = list(WanTransformer3DModel._keep_in_fp32_modules or [])
    for name, param in list(transformer.named_parameters()):
        if param.dtype != torch.float32 and keep_in_fp32(name, keep):
            owner, _, leaf = name.rpartition(".")
            module = transformer.get_submodule(owner) if owner else transformer
            setattr(module, leaf, torch.nn.Parameter(param.detach().float(), requires_grad=param.requires_grad))
    return transformer


def resident_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers this process holds (a DTensor's local shard)."""
    storages = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        for storage in get_untyped_storages(tensor):
            storages[storage.data_ptr(), storage.device] = storage.nbytes()
    return sum(storages.values())


def lora_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def patch_tokens(latent, patch) -> int:
    """Tokens of a latent ``[B, C, F, h, w]`` after the transformer's patch embedding."""
    return (latent[2] // patch[0]) * (latent[3] // patch[1]) * (latent[4] // patch[2])


def step_inputs(loss: str, dtype: torch.dtype, text_dim: int, text_tokens: int, latent=LATENT):
    """The loss function and the batch of one step: vpt's task on a batch of its own type."""
    from vpt.stages.grpo import GrpoLoss, GrpoOptions, RolloutBatch
    from vpt.stages.sft import ClipBatch, FlowMatchingTask

    generator = torch.Generator(device="cpu").manual_seed(1)
    device = torch.get_default_device()  # meta for the estimate
    x = torch.randn(latent, generator=generator, device="cpu").to(device)
    noise = torch.randn(latent, generator=generator, device="cpu").to(device)
    embeds = torch.randn(1, text_tokens, text_dim, generator=generator, device="cpu").to(device, dtype)
    sigma = torch.full((1,), 0.6, device=x.device)
    if loss == "sft":
        return FlowMatchingTask(dtype), ClipBatch(latent=x, noise=noise, sigma=sigma, embeds=embeds)
    task = GrpoLoss(GrpoOptions(reward={"score": 1.0}), noise_level=0.7, guidance=1.0, dtype=dtype)
    return task, RolloutBatch(x=x, x_next=x + 0.1 * noise, sigma=sigma, sigma_next=sigma - 0.05,
                              first_next=torch.full((1,), 0.95, device=x.device),
                              old_log_prob=torch.zeros(1, device=x.device), advantage=torch.ones(1, device=x.device),
                              embeds=embeds)


def measure(setup: str, loss: str, layers: int) -> dict:
    """One step of ``loss`` in ``setup`` (in this process): resident weight bytes, peak bytes, seconds."""
    from vpt.models.wan import MAX_SEQUENCE_LENGTH
    from vpt.train.config import TrainConfig
    from vpt.train.optim import build_optimizer
    from vpt.train.policy import DEFAULT_LORA_TARGETS, new_policy

    torch.manual_seed(0)
    dtype = torch.float32 if setup == "a" else torch.bfloat16
    config = {**WAN_1_3B, "num_layers": layers}
    transformer = build_transformer(config, dtype)
    policy = new_policy(transformer, DEFAULT_LORA_TARGETS, LORA_RANK, LORA_ALPHA, seed=0)
    if setup in ("c", "d"):
        transformer.enable_gradient_checkpointing()
    if setup == "d":  # as the harness shards
        from vpt.distributed import current_processes, shard_model

        shard_model(transformer, current_processes())
    optimizer = build_optimizer(policy, TrainConfig(max_steps=1))
    task, batch = step_inputs(loss, dtype, config["text_dim"], MAX_SEQUENCE_LENGTH)
    tracker = LiveBytes()
    tracker.track(*policy.parameters(), *policy.buffers(),
                  *(value for value in vars(batch).values() if isinstance(value, torch.Tensor)))
    began = time.perf_counter()
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup != "a"), \
                disable_input_dtype_casting(policy, active=setup != "a"):
            value, _ = task(policy, batch)
            value.backward()
        optimizer.step()
    seconds = time.perf_counter() - began
    if not torch.isfinite(value):
        raise SystemExit(f"{setup} {loss}: the loss is {value.item()}")
    return {"weights": resident_bytes(policy), "peak": tracker.peak, "seconds": seconds,
            "lora": lora_bytes(policy), "params": sum(p.numel() for p in transformer.parameters())}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_setup(setup: str, loss: str, layers: int) -> dict:
    """``measure`` in fresh processes (two for FSDP2, reporting the larger process)."""
    command = [sys.executable, __file__, "--layers", str(layers), "--measure", setup, loss]
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if setup != "d":
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
        return json.loads(output.strip().splitlines()[-1])
    environment.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**environment, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in (0, 1)]
    results = []
    for worker in workers:
        out, err = worker.communicate()
        if worker.returncode:
            raise SystemExit(f"FSDP2 worker failed ({worker.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {key: max(result[key] for result in results) for key in results[0]}


@contextmanager
def flash_attention():
    """``scaled_dot_product_attention`` as flash attention also on the meta device (whose default path is the
    math one, which keeps the N x N attention matrix that flash attention never stores)."""

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    with unittest.mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", attention):
        yield


def meta_activations(layers: int, checkpointing: bool) -> int:
    """Peak bytes above the weights of one sample's forward and backward through Wan 14B with ``layers`` blocks at
    480x832x81, on the meta device (LoRA gradients included, a few MiB)."""
    from vpt.models.wan import MAX_SEQUENCE_LENGTH
    from vpt.train.policy import DEFAULT_LORA_TARGETS, new_policy

    with torch.device("meta"):
        transformer = build_transformer({**WAN_14B, "num_layers": layers}, torch.bfloat16)
        policy = new_policy(transformer, DEFAULT_LORA_TARGETS, LORA_RANK, LORA_ALPHA, seed=0)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        task, batch = step_inputs("sft", torch.bfloat16, WAN_14B["text_dim"], MAX_SEQUENCE_LENGTH, LATENT_14B)
    tracker = LiveBytes()
    tracker.track(*policy.parameters(), *policy.buffers())
    weights = tracker.live
    with tracker, flash_attention():
        # the backward inside too, as the harness runs it: a checkpointed block's recompute must see the same
        # precision settings as its forward
        with torch.autocast("cpu", dtype=torch.bfloat16), disable_input_dtype_casting(policy):
            value, _ = task(policy, batch)
            value.backward()
    return tracker.peak - weights


def estimate_14b() -> dict:
    """Bytes of the 14B estimate: weights, LoRA, one block, activations per forward with and without
    checkpointing (see the module docstring)."""
    from vpt.train.policy import DEFAULT_LORA_TARGETS, new_policy

    with torch.device("meta"):
        transformer = build_transformer(WAN_14B, torch.bfloat16)
        policy = new_policy(transformer, DEFAULT_LORA_TARGETS, LORA_RANK, LORA_ALPHA, seed=0)
    lora = lora_bytes(policy)
    parameters = sum(p.numel() * p.element_size() for p in policy.parameters())
    buffers = sum(b.numel() * b.element_size() for b in policy.buffers())
    block = sum(p.numel() * p.element_size() for p in policy.base_model.model.blocks[0].parameters())
    layers = WAN_14B["num_layers"]
    activations = {}
    for checkpointing in (False, True):
        two, three = meta_activations(2, checkpointing), meta_activations(3, checkpointing)
        activations[checkpointing] = three + (layers - 3) * (three - two)
    return {"parameters": parameters, "buffers": buffers, "lora": lora, "block": block,
            "count": sum(p.numel() for p in transformer.parameters()), "activations": activations}


def print_measured(results: dict, layers: int) -> None:
    first = results["a", "sft"]
    print(f"Wan2.1-T2V-1.3B config ({layers} layers, dim 1536, {first['params'] / 1e9:.2f} B parameters), LoRA r"
          f"{LORA_RANK} ({first['lora'] / 4 / 1e6:.1f} M float32), latent {'x'.join(map(str, LATENT))} = "
          f"{patch_tokens(LATENT, WAN_1_3B['patch_size'])} tokens, text [1, 512, 4096]; one step + AdamW, CPU")
    print(f"{'setup':<34}{'loss':<11}{'weights GiB':>12}{'rest GiB':>10}{'peak GiB':>10}{'s/step':>8}")
    for setup, label in SETUPS.items():
        for loss in LOSSES:
            row = results[setup, loss]
            print(f"{label:<34}{loss:<11}{row['weights'] / GiB:>12.3f}{(row['peak'] - row['weights']) / GiB:>10.3f}"
                  f"{row['peak'] / GiB:>10.3f}{row['seconds']:>8.1f}")
    print(f"\n{'goal':<46}{'sft':>8}{'grpo':>8}{'target':>9}  met")
    goals = (("(b) peak / (a) peak", lambda r: r["b"]["peak"] / r["a"]["peak"], 0.55),
             ("(c) rest / (b) rest", lambda r: (r["c"]["peak"] - r["c"]["weights"])
              / (r["b"]["peak"] - r["b"]["weights"]), 0.3),
             ("(d) per-process peak / (c) peak", lambda r: r["d"]["peak"] / r["c"]["peak"], 0.6))
    for name, ratio, target in goals:
        values = [ratio({setup: results[setup, loss] for setup in SETUPS}) for loss in LOSSES]
        met = "yes" if all(value <= target for value in values) else "NO"
        print(f"{name:<46}{values[0]:>8.3f}{values[1]:>8.3f}{'<= ' + str(target):>9}  {met}")


def print_estimate(estimate: dict) -> None:
    tokens = patch_tokens(LATENT_14B, WAN_14B["patch_size"])
    print(f"\nWan2.1 14B ({estimate['count'] / 1e9:.2f} B parameters, 40 layers, dim 5120) at 480x832x81 (latent "
          f"[16, 21, 60, 104], {tokens} tokens), LoRA r{LORA_RANK} ({estimate['lora'] / 4 / 1e6:.1f} M), FSDP2 over "
          "all GPUs, micro-batch 1; estimate on the meta device, GiB per GPU")
    act, ckpt = estimate["activations"][False], estimate["activations"][True]
    print(f"activations of one forward with gradients: {act / GiB:.2f} without checkpointing, {ckpt / GiB:.2f} with "
          f"(one block's all-gather: {estimate['block'] / GiB:.2f})")
    forwards = (("sft", 1), ("dpo", 2), ("grpo-step", 1), ("grpo-step cfg", 2))
    header = "".join(f"{name:>15}{name + ' ckpt':>20}" for name, _ in forwards)
    print(f"{'GPUs':>4}{'weights':>9}{'LoRA+AdamW':>11}{'gather':>7}{header}")
    for gpus in (8, 16, 32):
        weights = (estimate["parameters"]) / gpus + estimate["buffers"]
        state = 3 * estimate["lora"] / gpus
        fixed = weights + state + 2 * estimate["block"]
        totals = "".join(f"{(fixed + n * act) / GiB:>15.1f}{(fixed + n * ckpt) / GiB:>20.1f}" for _, n in forwards)
        print(f"{gpus:>4}{weights / GiB:>9.2f}{state / GiB:>11.3f}{2 * estimate['block'] / GiB:>7.2f}{totals}")
    from vpt.rollouts.store import bytes_per_sample, wan_latent_shape

    shape, window = wan_latent_shape(480, 832, 81), range(2)  # an SDE window of 2 of 20 steps
    sizes = {dtype: bytes_per_sample(shape, window, dtype) / 2**20 for dtype in ("bf16", "fp32")}
    print(f"rollouts store, one sample at 480x832x81, 20 steps, SDE window 2: {sizes['bf16']:.1f} MiB bf16, "
          f"{sizes['fp32']:.1f} MiB fp32 (vpt.rollouts.store.bytes_per_sample)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=WAN_1_3B["num_layers"])
    parser.add_argument("--measure", nargs=2, metavar=("SETUP", "LOSS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.layers)), flush=True)
        os._exit(0)  # a gloo process group can hang or abort in interpreter teardown after the work is done
    began = time.perf_counter()
    check_tracker()
    results = {(setup, loss): run_setup(setup, loss, args.layers) for setup in SETUPS for loss in LOSSES}
    print_measured(results, args.layers)
    print_estimate(estimate_14b())
    print(f"\n(LiveBytes checked on a Linear by hand; {time.perf_counter() - began:.0f} s in all)")


if __name__ == "__main__":
    main()
