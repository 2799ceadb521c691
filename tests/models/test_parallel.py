"""``--context-parallel N``: the degree checks, and the refusal on CPU that stands for diffusers' own limitation
(its ``enable_parallelism`` cannot pick a device without an accelerator; the canary below says when that changes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vpt.distributed import Processes
from vpt.errors import VptError
from vpt.models.parallel import (
    check_context_parallel, check_token_split, context_parallel_choices, enable_context_parallel,
)
from vpt.models.zoo import TRANSFORMER_CONFIG
from vpt.train.lora import apply_lora


def transformer(heads: int = 2):
    """A real tiny ``WanTransformer3DModel``: the zoo's config with ``heads`` heads of 12 channels."""
    from diffusers import WanTransformer3DModel

    config = {**TRANSFORMER_CONFIG, "num_attention_heads": heads}
    return WanTransformer3DModel(in_channels=16, out_channels=16, **config)


def test_choices_divide_heads_and_processes():
    assert context_parallel_choices(12, 8) == [1, 2, 4]
    assert context_parallel_choices(40, 2) == [1, 2]
    assert context_parallel_choices(2, 1) == [1]


def test_a_degree_that_does_not_divide_is_refused_in_one_line():
    with pytest.raises(VptError) as raised:
        check_context_parallel(transformer(heads=12), 3, processes=2)
    assert str(raised.value) == ("--context-parallel 3: must divide the transformer's 12 attention heads and the 2 "
                                 "processes; choose 1 or 2")
    with pytest.raises(VptError, match=r"the 1 process; choose 1$"):
        check_context_parallel(transformer(), 2, processes=1)
    with pytest.raises(VptError, match=r"^--context-parallel 0: must be a whole number"):
        check_context_parallel(transformer(), 0, processes=2)


def test_heads_are_read_through_a_lora_wrapper():
    policy = apply_lora(transformer(heads=12), ["to_q"], rank=2)
    with pytest.raises(VptError, match="12 attention heads and the 8 processes; choose 1, 2 or 4"):
        check_context_parallel(policy, 3, processes=8)
    check_context_parallel(policy, 4, processes=8)


def test_tokens_must_split_evenly():
    model = transformer()  # patch (1, 2, 2)
    check_token_split(model, 2, latent_frames=2, latent_height=4, latent_width=4)  # 2 x 2 x 2 = 8 tokens
    with pytest.raises(VptError, match=r"^--context-parallel 2: the video's 27 latent tokens \(3 x 3 x 3 patches\)"):
        check_token_split(model, 2, latent_frames=3, latent_height=6, latent_width=6)


def test_degree_one_is_off_and_needs_no_process_group():
    assert not torch.distributed.is_initialized()
    enable_context_parallel(transformer(), 1, Processes())  # diffusers would refuse without a process group


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cpu_is_refused_before_any_process_group_is_needed():
    with pytest.raises(VptError, match=r"^--context-parallel 2 needs CUDA GPUs .*; run without it on CPU$"):
        enable_context_parallel(transformer(), 2, Processes(rank=0, count=2))


CANARY = textwrap.dedent("""
    import torch, torch.distributed as dist
    from diffusers import ContextParallelConfig, WanTransformer3DModel
    from vpt.models.zoo import TRANSFORMER_CONFIG
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    model = WanTransformer3DModel(in_channels=16, out_channels=16, **TRANSFORMER_CONFIG)
    try:
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    except ZeroDivisionError:
        print("refused")
    """)


@pytest.mark.skipif(torch.cuda.is_available(), reason="diffusers' CPU limitation")
def test_diffusers_still_cannot_place_context_parallelism_on_cpu():
    """diffusers' ``_resolve_parallel_config`` takes ``rank % torch.accelerator.device_count()`` (0 on CPU). When this
    fails, diffusers runs it on CPU: drop the CUDA refusal and test velocities with and without it on two processes."""
    ran = subprocess.run([sys.executable, "-c", CANARY], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ran.stdout.strip() == "refused", ran.stderr[-2000:]
