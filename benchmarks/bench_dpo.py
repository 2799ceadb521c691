"""Flow-DPO's training step, joint and gradient-decoupled, against a plain SFT (flow-matching) step on the same LoRA
Wan transformer: seconds per step and peak memory.

    python benchmarks/bench_dpo.py                       # CPU, a small Wan transformer (~1-3 s per DPO step)
    python benchmarks/bench_dpo.py --device cuda --dtype bfloat16 --layers 30 --heads 12 --head-dim 128 \\
        --text-dim 4096 --text-length 512 --frames 33 --height 480 --width 832 --batch 1     # Wan2.1-1.3B scale

(At 81 x 480 x 832 without activation checkpointing one clip's graph of the 1.3B model is ~80 GB in bf16, so the
joint step, which holds two, does not fit on one 80 GB GPU; 33 frames keep both steps on one GPU.)

Modes, each in its own process so that nothing one leaves in the allocator reaches another's numbers:

* ``sft``: :class:`vpt.train.flow.FlowMatchingTask` on B clips (B = ``--batch``, the size of one DPO branch);
* ``sft-2x``: the same on 2B clips, as many clips as a DPO step back-propagates (reference row, no target);
* ``dpo-joint``: :class:`vpt.train.flow.FlowDpoTask` with ``decoupled=False``: the reference (the transformer with
  the adapter disabled, no grad) on both branches, then the policy on chosen+rejected (2B clips) and one backward,
  so both branches' graphs are alive together;
* ``dpo-decoupled``: ``decoupled=True`` (TeleBoost): chosen with grad, rejected without grad (for η), backward of
  the chosen branch, rejected again with grad and its backward: one branch's graph alive at a time, for one extra
  no-grad forward of B clips.

Every step includes AdamW's step on the LoRA parameters. Time: the median (and the spread) of ``--repeats`` steps
after a warm-up step (which also creates AdamW's state, so it is outside the measured peaks).

Peak memory, three ways, each as the most bytes above what was live when the step began:

* ``live`` (the ratios use this one): the bytes of live tensors. On CUDA ``torch.cuda.max_memory_allocated``; on the
  CPU the allocator's running total of live bytes, read from the ``[memory]`` events of ``torch.profiler`` with
  ``profile_memory=True`` over one step (the CPU allocator keeps that total while the profiler records). It counts
  what the step holds, forward activations, gradients, temporaries, and nothing the allocator merely caches, so it
  is the number a GPU run (whose caching allocator reuses, but ``max_memory_allocated`` does not count, cached
  blocks) would see. The profiled step is separate from the timed ones (the profiler slows a step down).
* ``graph``: the bytes of tensors saved for backward (autograd's ``saved_tensors_hooks``, each storage counted
  once while any saved reference to it lives, parameters excluded): the activation memory that decoupling halves,
  without the transient buffers of single ops.
* ``RSS`` (CPU only, for comparison): the resident set, sampled every ~0.5 ms by a thread reading
  ``/proc/self/statm`` over one step begun after ``malloc_trim(0)`` (so that memory glibc kept from earlier steps
  is returned first and cannot hide new use). It includes allocator fragmentation and the thread pools' buffers and
  can miss peaks shorter than the sampling period, so it is the least exact; ``ru_maxrss`` would be worse (it
  keeps the setup's peak and cannot be reset).

Targets, printed as met or missed, never asserted: decoupled/joint peak <= 0.6 (one branch's graph instead of two),
decoupled/joint time <= 1.1, dpo-joint/sft and dpo-decoupled/sft peak <= 1.25 (the reference is the same
transformer with the adapter disabled: no second copy of the weights). The joint step holds the graph of 2B clips
where SFT holds B, so dpo-joint/sft is ~2 by construction; the ``sft-2x`` row shows the reference itself adds
nothing (dpo-joint/sft-2x ~ 1). The decoupled step pays one extra no-grad forward of B clips on top of the joint
step's no-grad reference forward of 2B clips, grad forward of 2B clips and LoRA backward (which computes no
weight gradients of the frozen base, so it costs about one forward); the script measures that extra forward and
prints the time ratio it predicts, 1 + t(no-grad forward, B) / t(joint step).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MODES = ("sft", "sft-2x", "dpo-joint", "dpo-decoupled")


# ------------------------------------------------------------------------------------------------ measuring
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """The highest RSS seen by a thread sampling ``/proc/self/statm`` while the ``with`` block runs."""

    def __init__(self, period: float = 0.0005):
        self.period, self.peak = period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def __enter__(self) -> "RssSampler":
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


class SavedGraphBytes:
    """Peak bytes of the tensors autograd saves for backward (storages counted once, parameters left out)."""

    def __init__(self, parameters):
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._parameters = {p.untyped_storage().data_ptr() for p in parameters}
        self._counts: dict[int, int] = {}
        self.live = self.peak = 0
        accountant = self

        class Held:
            __slots__ = ("tensor", "key", "nbytes")

            def __del__(self):
                if self.key is not None:
                    accountant._release(self.key, self.nbytes)

        self._held = Held

    def _pack(self, tensor):
        held = self._held()
        held.tensor, held.key, held.nbytes = tensor, None, 0
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self._parameters:
            held.key, held.nbytes = key, storage.nbytes()
            count = self._counts.get(key, 0)
            self._counts[key] = count + 1
            if count == 0:
                self.live += held.nbytes
                self.peak = max(self.peak, self.live)
        return held

    @staticmethod
    def _unpack(held):
        return held.tensor

    def _release(self, key: int, nbytes: int) -> None:
        count = self._counts[key] - 1
        if count:
            self._counts[key] = count
        else:
            del self._counts[key]
            self.live -= nbytes

    def __enter__(self) -> "SavedGraphBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _profiled_live_peak(step) -> int:
    """Peak bytes of live CPU tensors above the step's start, from the profiler's ``[memory]`` events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as handle:
            trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
                    key=lambda e: e["ts"])
    if not memory:
        return 0
    first = memory[0]["args"]
    start = first["Total Allocated"] - first["Bytes"]  # the running total just before the step's first event
    return max(e["args"]["Total Allocated"] for e in memory) - start


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------------ one mode
def run_mode(args) -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    from vpt.train import apply_lora
    from vpt.train.flow import DpoOptions, FlowDpoTask, FlowMatchingTask, Reference, branch_errors
    from vpt.train.policy import DEFAULT_LORA_TARGETS

    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=16,
        out_channels=16, text_dim=args.text_dim, freq_dim=256, ffn_dim=args.heads * args.head_dim * 4,
        num_layers=args.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads").to(device, dtype)
    transformer.eval()  # no dropout: the decoupled step evaluates the rejected branch twice
    policy = apply_lora(transformer, list(DEFAULT_LORA_TARGETS), args.rank, 2.0 * args.rank)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())

    shape = (args.batch, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    generator = torch.Generator().manual_seed(1)
    chosen, rejected, noise = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
    embeds = torch.randn(args.batch, args.text_length, args.text_dim, generator=generator).to(device, dtype)
    sigma = torch.linspace(0.3, 0.9, args.batch).to(device)

    def backward(loss):
        loss.backward()

    if args.mode.startswith("sft"):
        task = FlowMatchingTask(dtype)
        if args.mode == "sft":
            batch = {"latent": chosen, "noise": noise, "sigma": sigma, "embeds": embeds}
        else:
            batch = {"latent": torch.cat([chosen, rejected]), "noise": noise.repeat(2, 1, 1, 1, 1),
                     "sigma": sigma.repeat(2), "embeds": embeds.repeat(2, 1, 1)}

        def step():
            loss, _ = task(policy, batch)
            loss.backward()
    else:
        task = FlowDpoTask(DpoOptions(decoupled=args.mode == "dpo-decoupled", beta=args.beta),
                           Reference(policy, parent_weights=False), dtype)
        batch = {"chosen": chosen, "rejected": rejected, "noise": noise, "sigma": sigma, "embeds": embeds}

        def step():
            task(policy, batch, backward)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def once():
        step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()

    once()  # warm-up: kernels, thread pools, AdamW's state
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        once()
        times.append(time.perf_counter() - began)

    result = {"mode": args.mode, "seconds": statistics.median(times), "min": min(times), "max": max(times),
              "times": times, "weights": weights, "threads": torch.get_num_threads()}

    # peak of live tensor bytes above the step's start
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        once()
        result["live"] = torch.cuda.max_memory_allocated() - start
        result["rss"] = None
    else:
        result["live"] = _profiled_live_peak(once)
        _malloc_trim()
        with RssSampler() as sampler:
            start = _rss_bytes()
            once()
        result["rss"] = max(sampler.peak - start, 0)

    with SavedGraphBytes(policy.parameters()) as graph:
        once()
    result["graph"] = graph.peak

    if args.mode == "dpo-joint":
        # the decoupled step's extra cost: one no-grad forward of the policy on one branch (B clips)
        def extra_forward():
            with torch.no_grad():
                branch_errors(policy, rejected, noise, sigma, embeds, dtype)
            synchronize()

        extra = []
        for _ in range(max(3, args.repeats)):
            began = time.perf_counter()
            extra_forward()
            extra.append(time.perf_counter() - began)
        result["extra_forward"] = statistics.median(extra)
    return result


# ------------------------------------------------------------------------------------------------ the table
def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _verdict(value: float, target: float) -> str:
    return f"{value:.2f}x (target <= {target}: {'met' if value <= target else 'MISSED'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--text-length", type=int, default=64)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--batch", type=int, default=1, help="clips per DPO branch (and per SFT step)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    began = time.perf_counter()
    modes = [mode for mode in args.modes.split(",") if mode]
    results = {}
    for mode in modes:
        command = [sys.executable, __file__, "--mode", mode] + [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if name not in ("mode",)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            sys.exit(f"mode {mode} failed:\n{completed.stderr}")
        results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])

    first = next(iter(results.values()))
    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)
    print(f"device {args.device} ({first['threads']} threads), {args.dtype}, {args.layers} layers x {args.heads} "
          f"heads x {args.head_dim}, latents {args.batch} x 16 x {(args.frames - 1) // 4 + 1} x {args.height // 8} x "
          f"{args.width // 8} per branch ({tokens} tokens per clip), LoRA r{args.rank}, weights "
          f"{first['weights'] / 2**20:.1f} MiB, {args.repeats} timed steps per mode")
    sft = results.get("sft")
    print(f"{'mode':<15}{'s/step':>8}{'  (min-max)':<16}{'live MiB':>10}{'graph MiB':>11}{'RSS MiB':>10}"
          f"{'live/sft':>10}")
    for mode, row in results.items():
        spread = f"  ({row['min']:.2f}-{row['max']:.2f})"
        versus = f"{row['live'] / sft['live']:.2f}" if sft and sft["live"] else "-"
        print(f"{mode:<15}{row['seconds']:>8.3f}{spread:<16}{_mib(row['live']):>10}{_mib(row['graph']):>11}"
              f"{_mib(row['rss']):>10}{versus:>10}")

    joint, decoupled = results.get("dpo-joint"), results.get("dpo-decoupled")
    if joint and decoupled:
        print(f"decoupled/joint peak   {_verdict(decoupled['live'] / joint['live'], 0.6)}; graph "
              f"{decoupled['graph'] / max(joint['graph'], 1):.2f}x"
              + (f", RSS {decoupled['rss'] / max(joint['rss'], 1):.2f}x" if joint["rss"] else ""))
        print(f"decoupled/joint time   {_verdict(decoupled['seconds'] / joint['seconds'], 1.1)}")
        extra = joint["extra_forward"]
        print(f"  first principles: the decoupled step adds one no-grad forward of {args.batch} clip(s), "
              f"measured {extra:.3f} s = {extra / joint['seconds']:.1%} of the joint step ({joint['seconds']:.3f} s:"
              f" no-grad reference forward of 2B + grad forward of 2B + LoRA backward of 2B + AdamW) -> predicted "
              f"{1 + extra / joint['seconds']:.2f}x, measured {decoupled['seconds'] / joint['seconds']:.2f}x")
    if sft:
        for name, row in (("dpo-joint", joint), ("dpo-decoupled", decoupled)):
            if row:
                print(f"{name}/sft peak {' ' * (14 - len(name))}{_verdict(row['live'] / sft['live'], 1.25)}")
    if joint and results.get("sft-2x"):
        print(f"dpo-joint/sft-2x peak  {joint['live'] / results['sft-2x']['live']:.2f}x (same clips with grad: "
              "what the reference adds; the joint step holds 2B clips' graph where sft holds B)")
    print(f"took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
