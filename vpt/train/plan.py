"""How the examples of an epoch are dealt out to optimizer steps, processes and micro-batches, so that every step
trains on exactly the gradient one process would compute, whatever the number of processes.

Optimizer step ``s`` of an epoch takes the examples ``order[s·G : (s+1)·G]`` (``G`` examples per step over all
processes; the last step of an epoch may hold fewer). They are cut into micro-batches of ``b`` consecutive examples;
micro-batch ``i`` goes to process ``i mod P`` as its ``⌊i/P⌋``-th. A process left short in a step (the examples do
not split evenly) runs *padding* micro-batches with weight 0, so every process runs the same forward and backward
passes (data-parallel gradient averaging and FSDP's collectives need that) and no example counts twice.

Each micro-batch's mean loss is scaled by ``w_mb · P / W``: ``w_mb`` the weight of its examples (1 each, or what
the dataset's ``item_weights()`` says, e.g. the samples in a GRPO block), ``W`` the weight of the whole step and ``P``
the processes the gradient is averaged over. The step's gradient is then the weighted mean over its examples —
the same on 1 process or on 7, with full or ragged steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward pass of one process: dataset ``indices`` and the factor its mean loss is scaled by
    (0 for a padding micro-batch, whose indices only give the model something to run on)."""

    indices: tuple[int, ...]
    scale: float
    examples: int  # real examples (0 when padding)
    weight: float  # their weight


class StepPlan:
    """The micro-batches of every optimizer step of an epoch for one process (see the module docstring).

    ``weights``: one weight per dataset item (None: 1 each). ``step_examples``: ``G``, examples per optimizer step
    over all processes; ``micro_batch``: ``b``; ``processes``, ``rank``: ``P`` and this process.
    """

    def __init__(self, size: int, micro_batch: int, step_examples: int, processes: int, rank: int,
                 weights: Sequence[float] | None = None):
        if size < 1 or micro_batch < 1 or step_examples < 1 or not 0 <= rank < processes:
            raise ValueError(f"bad plan: size={size} micro_batch={micro_batch} step_examples={step_examples} "
                             f"processes={processes} rank={rank}")
        self.size, self.micro_batch, self.step_examples = size, micro_batch, step_examples
        self.processes, self.rank = processes, rank
        self.weights = [1.0] * size if weights is None else [float(w) for w in weights]
        if len(self.weights) != size or any(not (w > 0 and math.isfinite(w)) for w in self.weights):
            raise ValueError("item weights must be one finite positive number per dataset item")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.size / self.step_examples)

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches each process runs in a full step."""
        return math.ceil(math.ceil(self.step_examples / self.micro_batch) / self.processes)

    def step(self, order: Sequence[int], step: int) -> list[MicroBatch]:
        """This process's micro-batches of optimizer step ``step`` of the epoch whose example order is ``order``."""
        chunk = list(order[step * self.step_examples:(step + 1) * self.step_examples])
        if not chunk:
            raise IndexError(f"step {step} is past the end of the epoch ({self.steps_per_epoch} steps)")
        total = sum(self.weights[i] for i in chunk)
        batches = [chunk[i:i + self.micro_batch] for i in range(0, len(chunk), self.micro_batch)]
        rounds = math.ceil(len(batches) / self.processes)
        mine = []
        for round_index in range(rounds):
            position = round_index * self.processes + self.rank
            if position < len(batches):
                indices = batches[position]
                weight = sum(self.weights[i] for i in indices)
                mine.append(MicroBatch(tuple(indices), weight * self.processes / total, len(indices), weight))
            else:
                mine.append(MicroBatch((chunk[0],), 0.0, 0, 0.0))
        return mine
