"""``--dtype``: the dtype frozen weights are loaded in (the generator, its text encoder and VAE, frozen reward
models), one option with one set of values in every command. What trains stays float32 whatever it is.

torch is imported only when a dtype object is asked for, so a command can check the option before (or without)
loading torch.
"""

from __future__ import annotations

from vpt.errors import VptError

DTYPE_NAMES = ("bf16", "fp32")
_SPELLINGS = {"bfloat16": "bf16", "float32": "fp32"}  # what sample-rollouts and guide took before


def check_dtype(text: str) -> str:
    """The name ``--dtype`` gives, ``bf16`` or ``fp32`` (also spelled ``bfloat16`` / ``float32``); a one-line
    :class:`VptError` naming ``--dtype`` for anything else."""
    name = _SPELLINGS.get(text, text)
    if name not in DTYPE_NAMES:
        raise VptError(f"--dtype {text}: choose bf16 or fp32")
    return name


def weights_dtype(text: str):
    """The ``torch.dtype`` of ``--dtype`` (checked by :func:`check_dtype`): ``torch.bfloat16`` or ``torch.float32``."""
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[check_dtype(text)]


def dtype_name(dtype) -> str:
    """How records (``policy.json``, ``reward_training.json``) name a weights dtype: ``bf16`` or ``fp32``."""
    return check_dtype(str(dtype).removeprefix("torch."))
