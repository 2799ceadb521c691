"""Flow-DPO's training step, joint and gradient-decoupled, against a plain SFT (flow-matching) step on the same LoRA
Wan transformer: seconds per step and peak memory.

    python benchmarks/bench_dpo.py                       # CPU: ~2 s per DPO step on one thread, ~3 min in all
    python benchmarks/bench_dpo.py --device cuda --dtype bfloat16 --layers 30 --heads 12 --head-dim 128 \\
        --text-dim 4096 --text-length 512 --frames 33 --height 480 --width 832 --batch 1     # Wan2.1-1.3B scale

At GPU scale mind the joint step: without activation checkpointing the graph of one clip is ~24 saved values per
token, layer and channel (measured on the CPU model), i.e. ~2.4 MB per token for the 1.3B model in bf16: ~34 GB
per clip at 33 x 480 x 832 (14040 tokens), so the joint step (two clips' graphs) needs ~70 GB and ~80 GB of GPU
memory; at 81 frames one clip's graph alone is ~80 GB and only the decoupled step can fit on one GPU.

Modes, each in its own process so that nothing one leaves in the allocator reaches another's numbers:

* ``sft``: :class:`vpt.stages.sft.FlowMatchingTask` on B clips (B = ``--batch``, the size of one DPO branch);
* ``sft-2x``: the same on 2B clips, as many clips as a DPO step back-propagates (a reference row, no target);
* ``dpo-joint``: :class:`vpt.stages.dpo.FlowDpoTask` with ``decoupled=False``: the reference (the transformer with
  the adapter disabled, no grad) on both branches, then the policy on chosen+rejected (2B clips) and one backward,
  so both branches' graphs are alive together;
* ``dpo-decoupled``: ``decoupled=True`` (TeleBoost), one branch's graph alive at a time. With one pair (B = 1, the
  default and the memory-bound case) the chosen branch's gradient is taken with ``autograd.grad`` and kept aside
  (an adapter-sized stash), then the rejected branch runs with grad and one backward adds both: the forwards of
  the joint step, as two B-clip passes. With B > 1: rejected without grad (for η), chosen with grad and its
  backward, rejected again with grad and its backward: one extra no-grad forward of B clips.

Every step includes AdamW's step on the LoRA parameters and frees the gradients. The first step of a process is a
warm-up (kernels, thread pools, AdamW's state, so the state is outside the measured peaks).

Time. The table's s/step is the median (min-max) of ``--repeats`` steps of each mode's own process, with the median
CPU time of the process beside it. The decoupled/joint time ratio comes from a fifth process that alternates
joint and decoupled steps (``--pairs`` pairs, the order swapped every pair) so that both see the same load from
the rest of the machine; on the CPU with one thread the ratio is of CPU time (``time.process_time``: what the step
cost, without the time other processes held the core, which on a shared machine swings the wall time by tens of
per cent), otherwise of wall time; the wall-time ratio is printed too. The same process times a no-grad forward
of the policy on B and on 2B clips, to explain the ratio from first principles. With B > 1 the decoupled step is
the joint step plus one no-grad forward of B clips: 1 + t(no-grad forward, B) / t(joint step). The joint step is a
no-grad reference forward of 2B clips (2f for a no-grad forward f of B clips), a grad forward and LoRA backward of
2B clips (2(f + b); the frozen base gets no weight gradients, so b is ~1.5-2 f) and AdamW on the small adapter:
~7-8 f, hence ~1.12-1.14x. With B = 1 nothing is repeated and the ratio is ~1.0x (the branches lose only the batching of one 2B pass).

Peak memory, three ways, each the most bytes above what was in use when the step began (the weights, inputs and
AdamW's state are setup, not counted; the weights' size is printed in the header):

* ``live`` (the ratios use this one): the bytes of live tensors. On CUDA ``torch.cuda.max_memory_allocated``; on the
  CPU the allocator's running total of live bytes, read from the ``[memory]`` events of ``torch.profiler`` with
  ``profile_memory=True`` over one separate step (the CPU allocator keeps that total while the profiler records).
  It counts what the step holds (activations, gradients, temporaries) and nothing an allocator merely keeps, so it
  is what ``max_memory_allocated`` reports on a GPU. (Check: with ``MALLOC_MMAP_THRESHOLD_=16384``, so that glibc
  returns every freed large block at once, the sampled RSS peaks below match ``live`` to 1%.)
* ``graph``: the bytes of tensors saved for backward (autograd's ``saved_tensors_hooks``; each storage counted once
  while any saved reference to it lives; parameters excluded): the activation memory that decoupling halves,
  without the transient buffers of single ops.
* ``RSS`` (CPU only, for comparison): the resident set, sampled every ~0.5 ms by a thread reading
  ``/proc/self/statm`` over one step begun after ``malloc_trim(0)`` (so memory glibc kept from earlier steps cannot
  hide new use). With glibc's default dynamic mmap threshold freed blocks stay resident and the heap fragments, so
  it overstates the step's need 2-4x and by different amounts per mode; it is shown to make that visible, not to
  judge by. (``ru_maxrss`` would be worse still: it keeps the setup's peak and cannot be reset.)

Targets, printed as met or MISSED, never asserted: decoupled/joint peak <= 0.6 (one branch's graph instead of
two), decoupled/joint time <= 1.1, dpo-joint/sft and dpo-decoupled/sft peak <= 1.25 (the reference is the same
transformer with the adapter disabled: no second copy of the weights). Note that the joint step holds the graph of
2B clips where SFT holds B, so dpo-joint/sft is ~2 by construction; the ``sft-2x`` row shows that the reference
itself adds nothing (dpo-joint/sft-2x ~ 1.00).
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


# ------------------------------------------------------------------------------------------------ one process
def _setup(args):
    """The LoRA policy, its AdamW and the inputs of one DPO pair batch (B clips per branch), on ``args.device``."""
    import torch
    from diffusers import WanTransformer3DModel

    from vpt.stages.dpo import PairBatch
    from vpt.train import apply_lora
    from vpt.train.policy import DEFAULT_LORA_TARGETS

    torch.manual_seed(0)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=16,
        out_channels=16, text_dim=args.text_dim, freq_dim=256, ffn_dim=args.heads * args.head_dim * 4,
        num_layers=args.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads").to(device)
    if dtype != torch.float32:
        transformer.to(dtype)
    transformer.eval()  # no dropout: the decoupled step evaluates the rejected branch twice
    policy = apply_lora(transformer, list(DEFAULT_LORA_TARGETS), args.rank, 2.0 * args.rank)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    shape = (args.batch, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    generator = torch.Generator().manual_seed(1)
    chosen, rejected, noise = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
    embeds = torch.randn(args.batch, args.text_length, args.text_dim, generator=generator).to(device, dtype)
    sigma = torch.linspace(0.3, 0.9, args.batch).to(device)
    batch = PairBatch(chosen=chosen, rejected=rejected, noise=noise, sigma=sigma, embeds=embeds)
    return policy, optimizer, batch, dtype


def _synchronize(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _training_step(mode: str, args, policy, optimizer, batch, dtype):
    """One training step of ``mode`` (loss, backward, AdamW step, grads freed), as a function of no arguments."""
    import torch

    from vpt.stages.dpo import DpoOptions, FlowDpoTask, Reference
    from vpt.stages.sft import ClipBatch, FlowMatchingTask

    if mode.startswith("sft"):
        task = FlowMatchingTask(dtype)
        if mode == "sft":
            clips = ClipBatch(latent=batch.chosen, noise=batch.noise, sigma=batch.sigma, embeds=batch.embeds)
        else:
            clips = ClipBatch(latent=torch.cat([batch.chosen, batch.rejected]),
                              noise=batch.noise.repeat(2, 1, 1, 1, 1), sigma=batch.sigma.repeat(2),
                              embeds=batch.embeds.repeat(2, 1, 1))

        def loss_and_backward():
            loss, _ = task(policy, clips)
            loss.backward()
    else:
        task = FlowDpoTask(DpoOptions(decoupled=mode == "dpo-decoupled", beta=args.beta),
                           Reference(policy, parent_weights=False), dtype)

        def loss_and_backward():
            task(policy, batch, lambda loss: loss.backward())

    def step():
        loss_and_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(args.device)

    return step


def _timed(function, repeats: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) of each of ``repeats`` calls. With one thread the CPU time is
    what the call cost without the time other processes took the core away (the machine may be shared)."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def run_mode(args) -> dict:
    """Time and peak memory of one mode's training step."""
    import torch

    policy, optimizer, batch, dtype = _setup(args)
    step = _training_step(args.mode, args, policy, optimizer, batch, dtype)
    step()  # warm-up: kernels, thread pools, AdamW's state
    times = _timed(step, args.repeats)
    result = {"mode": args.mode, "times": times, "threads": torch.get_num_threads(),
              "weights": sum(p.numel() * p.element_size() for p in policy.parameters())}
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        result["live"], result["rss"] = torch.cuda.max_memory_allocated() - start, None
    else:
        result["live"] = _profiled_live_peak(step)
        _malloc_trim()
        with RssSampler() as sampler:
            start = _rss_bytes()
            step()
        result["rss"] = max(sampler.peak - start, 0)
    with SavedGraphBytes(policy.parameters()) as graph:
        step()
    result["graph"] = graph.peak
    return result


def run_paired(args) -> dict:
    """The decoupled/joint time ratio from alternating steps in one process (pairs see the same load from the rest
    of the machine), and the no-grad forwards that explain it."""
    import torch

    from vpt.stages.dpo import branch_errors

    policy, optimizer, batch, dtype = _setup(args)
    joint = _training_step("dpo-joint", args, policy, optimizer, batch, dtype)
    decoupled = _training_step("dpo-decoupled", args, policy, optimizer, batch, dtype)
    noise, sigma, embeds = batch.noise, batch.sigma, batch.embeds

    def forward(clips: int):
        def run():
            with torch.no_grad():
                branch_errors(policy, batch.rejected.repeat(clips, 1, 1, 1, 1), noise.repeat(clips, 1, 1, 1, 1),
                              sigma.repeat(clips), embeds.repeat(clips, 1, 1), dtype)
            _synchronize(args.device)
        return run

    joint(), decoupled()  # warm-up
    pairs = []
    for index in range(args.pairs):  # alternate which goes first
        if index % 2:
            seconds_decoupled, seconds_joint = _timed(decoupled, 1)[0], _timed(joint, 1)[0]
        else:
            seconds_joint, seconds_decoupled = _timed(joint, 1)[0], _timed(decoupled, 1)[0]
        pairs.append((seconds_joint, seconds_decoupled))
    forward(1)()
    return {"pairs": pairs, "forward_b": _timed(forward(1), args.pairs), "forward_2b": _timed(forward(2), args.pairs)}


# ------------------------------------------------------------------------------------------------ the table
def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _verdict(value: float, target: float) -> str:
    return f"{value:.2f}x (target <= {target}: {'met' if value <= target else 'MISSED'})"


def _median(values) -> float:
    return statistics.median(list(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--text-length", type=int, default=64)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1, help="clips per DPO branch (and per SFT step)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--pairs", type=int, default=8, help="alternating joint/decoupled steps timed in one process")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--mode", choices=MODES + ("paired",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_paired(args) if args.mode == "paired" else run_mode(args)))
        return

    began = time.perf_counter()
    modes = [mode for mode in args.modes.split(",") if mode]
    if "dpo-joint" in modes and "dpo-decoupled" in modes:
        modes.append("paired")
    results = {}
    for mode in modes:
        command = [sys.executable, __file__, "--mode", mode] + [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if name != "mode"]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            sys.exit(f"mode {mode} failed:\n{completed.stderr}")
        results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
    paired = results.pop("paired", None)

    first = next(iter(results.values()))
    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)
    print(f"device {args.device} ({first['threads']} threads), {args.dtype}, {args.layers} layers x {args.heads} "
          f"heads x {args.head_dim}, latents {args.batch} x 16 x {(args.frames - 1) // 4 + 1} x {args.height // 8} x "
          f"{args.width // 8} per branch ({tokens} tokens per clip), LoRA r{args.rank}, weights "
          f"{first['weights'] / 2**20:.1f} MiB; s/step: median of {args.repeats} steps after a warm-up")
    sft = results.get("sft")
    print(f"{'mode':<15}{'s/step':>8}{'  (min-max)':<16}{'CPU s/step':>11}{'live MiB':>10}{'graph MiB':>11}"
          f"{'RSS MiB':>10}{'live/sft':>10}")
    for mode, row in results.items():
        wall = [w for w, _ in row["times"]]
        spread = f"  ({min(wall):.2f}-{max(wall):.2f})"
        versus = f"{row['live'] / sft['live']:.2f}" if sft and sft["live"] else "-"
        print(f"{mode:<15}{_median(wall):>8.3f}{spread:<16}{_median(c for _, c in row['times']):>11.3f}"
              f"{_mib(row['live']):>10}{_mib(row['graph']):>11}{_mib(row['rss']):>10}{versus:>10}")

    joint, decoupled = results.get("dpo-joint"), results.get("dpo-decoupled")
    if joint and decoupled:
        print(f"decoupled/joint peak   {_verdict(decoupled['live'] / joint['live'], 0.6)}; graph "
              f"{decoupled['graph'] / max(joint['graph'], 1):.2f}x"
              + (f", RSS {decoupled['rss'] / max(joint['rss'], 1):.2f}x" if joint["rss"] else ""))
        # on the CPU with one thread, CPU time (immune to other processes taking the core) decides; else wall time
        use_cpu = args.device == "cpu" and first["threads"] == 1
        clock = 1 if use_cpu else 0
        ratios = sorted(d[clock] / j[clock] for j, d in paired["pairs"])
        walls = sorted(d[0] / j[0] for j, d in paired["pairs"])
        print(f"decoupled/joint time   {_verdict(_median(ratios), 1.1)}: median over {len(ratios)} alternating pairs "
              f"in one process of {'CPU' if use_cpu else 'wall'} time (pairs {ratios[0]:.2f}-{ratios[-1]:.2f})"
              + (f"; wall time {_median(walls):.2f}x (pairs {walls[0]:.2f}-{walls[-1]:.2f})" if use_cpu else ""))
        step_joint = _median(j[clock] for j, _ in paired["pairs"])
        extra = _median(t[clock] for t in paired["forward_b"])
        reference = _median(t[clock] for t in paired["forward_2b"])
        unit = f"{'CPU' if use_cpu else 'wall'} seconds, medians"
        if args.batch == 1:
            print(f"  why: with one pair the chosen gradient is kept aside, so the decoupled step runs the joint "
                  f"step's forwards (joint step {step_joint:.3f} s; the reference's no-grad forward of 2B clips "
                  f"{reference:.3f} s), the policy's as two B-clip passes instead of one 2B pass -> predicted ~1.0x "
                  f"({unit})")
        else:
            print(f"  why: the decoupled step = the joint step + one no-grad forward of the policy on B clips. Joint "
                  f"step {step_joint:.3f} s = no-grad reference forward of 2B clips ({reference:.3f} s) + grad "
                  f"forward and LoRA backward of 2B clips + AdamW ({step_joint - reference:.3f} s); the extra no-grad "
                  f"forward of B clips takes {extra:.3f} s = {extra / step_joint:.1%} of it -> predicted "
                  f"{1 + extra / step_joint:.2f}x ({unit})")
    if sft:
        for name, row in (("dpo-joint", joint), ("dpo-decoupled", decoupled)):
            if row:
                print(f"{name}/sft peak {' ' * (14 - len(name))}{_verdict(row['live'] / sft['live'], 1.25)}")
    if joint and results.get("sft-2x"):
        print(f"dpo-joint/sft-2x peak  {joint['live'] / results['sft-2x']['live']:.2f}x (the same 2B clips with grad:"
              " what the reference adds; dpo-joint holds 2B clips' graph where sft holds B)")
    print(f"took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
