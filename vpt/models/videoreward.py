"""VideoReward (VideoAlign): a Qwen2-VL reward model that rates a video on three dimensions at three special tokens.

Model
-----
:class:`VideoRewardModel` wraps ``transformers.Qwen2VLForConditionalGeneration`` (optionally with a peft LoRA
adapter on its language model), the tokenizer with three added special tokens ``<|VQ_reward|>``, ``<|MQ_reward|>``,
``<|TA_reward|>``, and a bias-free linear head on the last-layer hidden state at each of those tokens:

* ``head="shared"`` (the official release, ``output_dim=1``): one ``hidden -> 1`` map applied at all three tokens;
* ``head="per_dim"`` (the training script's ``output_dim=3``): ``hidden -> 3``; the VQ token's output 0, the MQ
  token's output 1 and the TA token's output 2 (the diagonal).

``forward`` returns raw scores ``[B, 3]`` in the order (vq, mq, ta); :meth:`VideoRewardModel.normalise` maps them to
``(r - mean) / std`` per dimension plus ``overall = vq + mq + ta`` with the stats in the config (release values by
default).

Prompt
------
The chat text is Qwen2-VL's template with the video first and VideoAlign's ``detailed_special`` query (kept
verbatim in :data:`VIDEOALIGN_QUERY`, so released weights see the text they were trained on)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|><|video_pad|>...<|vision_end|>
    \\nYou are tasked with ... Visual Quality ... <|VQ_reward|>\\nEND\\n ... Motion Quality ... <|MQ_reward|>\\nEND\\n
    ... Textual prompt - {prompt}\\nPlease provide the ratings of Text Alignment: <|TA_reward|>\\nEND\\n
    <|im_end|>\\n<|im_start|>assistant\\n

so under causal attention the VQ and MQ tokens see the video but never the text prompt (context-agnostic); the TA
token sees both. ``<|video_pad|>`` is repeated once per merged video token (``t * h * w / 4``).

Positions
---------
``position_ids="sequential"`` (default) feeds 1-D positions ``0 .. n-1`` over each row's real tokens: what the
official code computed under transformers 4.45 (its forward passed no position ids to the language model, which
then counted ``0 .. L-1``; with right padding the two agree). ``"mrope"`` lets transformers compute Qwen2-VL's 3-D
multimodal rotary positions (``mm_token_type_ids`` marks the video tokens). Released weights score as published
only with ``sequential``.

Checkpoints
-----------
Our layout (:func:`save_videoreward` / :func:`load_videoreward`)::

    DIR/vpt_videoreward.json     format, config (head, positions, norm stats, frame rule, pixel bounds), weights kind
    DIR/tokenizer/               tokenizer with the reward tokens
    DIR/head.safetensors         {"weight": [1 or 3, hidden]}
    DIR/backbone/                kind "full": Qwen2-VL save_pretrained (config.json + model.safetensors)
    DIR/adapter/                 kind "lora": peft adapter (adapter_config.json + adapter_model.safetensors)
    DIR/non_lora.safetensors     kind "lora": vision tower + merger (``model.visual.*``), reward-token embedding rows
    DIR/base/                    kind "lora", optional: the base Qwen2-VL (else an absolute path in the json)

VideoAlign's layout (:func:`export_videoalign`; read by :func:`load_videoreward` as well)::

    DIR/model_config.json        data_config, training_args, model_config, peft_lora_config, inference_config
    DIR/checkpoint-<step>/model.pth                   full state dict (peft-wrapped keys when LoRA is on), or
    DIR/checkpoint-<step>/adapter_model.safetensors   LoRA weights (keys without the adapter name) +
    DIR/checkpoint-<step>/non_lora_state_dict.pth     vision tower, merger, embed_tokens, rm_head (peft-wrapped keys)
    DIR/checkpoint-<step>/tokenizer/                  tokenizer (else the base's, with the reward tokens added)
    DIR/base/                    (our exports) the base Qwen2-VL, named by model_config.model_name_or_path = "base"

Its keys use transformers 4.45 module paths (``model.layers.*``, ``model.embed_tokens``, ``model.norm``,
``visual.*``, ``lm_head``, ``rm_head``); :func:`official_to_current_key` / :func:`current_to_official_key` map them
to and from the paths of transformers >= 4.52 (``model.language_model.*``, ``model.visual.*``). ``.pth`` files are
read with ``torch.load(..., weights_only=True)``. The base model named by ``model_name_or_path`` must be a local
directory (nothing is downloaded): relative to DIR, absolute, or given as ``base=``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from vpt.errors import VptError
from vpt.io.jsonfile import read_json_object
from vpt.io.video import FrameSampling
from vpt.models.qwen_frames import MAX_PIXELS, MIN_PIXELS, video_patches

__all__ = [
    "DIMENSIONS",
    "REWARD_TOKENS",
    "RELEASE_NORM_MEAN",
    "RELEASE_NORM_STD",
    "VIDEOALIGN_QUERY",
    "VideoRewardBatch",
    "VideoRewardConfig",
    "VideoRewardModel",
    "VideoRewardProcessor",
    "build_tiny_videoreward",
    "chat_text",
    "current_to_official_key",
    "export_videoalign",
    "load_videoreward",
    "normalise_rewards",
    "official_to_current_key",
    "save_videoreward",
    "videoalign_lora_targets",
    "videoalign_query",
    "write_zoo_videoreward",
]

REWARD_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
DIMENSIONS = ("vq", "mq", "ta")
RELEASE_NORM_MEAN = (3.6757, 1.1646, 2.8105)  # VideoAlign release inference_config VQ/MQ/TA_mean
RELEASE_NORM_STD = (2.2476, 1.3811, 2.5121)
HEAD_KINDS = {"shared": 1, "per_dim": 3}
POSITION_MODES = ("sequential", "mrope")
PADDING_SIDES = ("right", "left")
SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_LORA_EXCLUDE = ("lm_head", "rm_head", "embed_tokens", "visual")

CONFIG_FILE = "vpt_videoreward.json"
FORMAT_NAME = "vpt-videoreward"
FORMAT_VERSION = 1
OFFICIAL_CONFIG = "model_config.json"
PEFT_PREFIX = "base_model.model."
_HINT = "build one with `vpt zoo tiny DIR`"

# VideoAlign's "detailed_special" query (prompt_template.py), verbatim: released weights were trained on this text.
VIDEOALIGN_QUERY = (
    "\nYou are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion "
    "Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being "
    "the worst and 10 being the best. Each evaluation should be independent of the others.\n"
    "\n"
    "**Visual Quality:**  \n"
    "Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions "
    "should be considered:\n"
    "- **Reasonableness:** The video should not contain any significant biological or logical errors, such as "
    "abnormal body structures or nonsensical environmental setups.\n"
    "- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to "
    "interpret, with no blurring or indistinct areas.\n"
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements "
    "(e.g., hair, clothing, shadows).\n"
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, "
    "composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of "
    "harmony and balance.\n"
    "- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or "
    "adult material. If such content is present, the image quality and satisfaction score should be the lowest "
    "possible. \n"
    "\n"
    "Please provide the ratings of Visual Quality: <|VQ_reward|>\n"
    "END\n"
    "\n"
    "**Motion Quality:**  \n"
    "Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following "
    "sub-dimensions:\n"
    "- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural "
    "jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body "
    "parts).\n"
    "- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should "
    "flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth "
    "movements).\n"
    "- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or "
    "camera angles should be seamless, and the overall dynamic feel should be visually pleasing.\n"
    "- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with "
    "the background, without obvious artifacts or the feeling of cut-and-paste effects.\n"
    "- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the "
    "video might have blurry or unsteady sections that hinder visual continuity.\n"
    "- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion "
    "quality.\n"
    "\n"
    "Please provide the ratings of Motion Quality: <|MQ_reward|>\n"
    "END\n"
    "\n"
    "**Text Alignment:**  \n"
    "Assess how well the video matches the textual prompt across the following sub-dimensions:\n"
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align "
    "with the textual description. The subject should match the description in terms of number, appearance, and "
    "behavior.\n"
    "- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like "
    "talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, "
    "scale, and direction.\n"
    "- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if "
    "real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  \n"
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the "
    "video adheres to this style.\n"
    "- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are "
    "consistent with the expected behavior from the prompt.\n"
    "\n"
    "Textual prompt - {text_prompt}\n"
    "Please provide the ratings of Text Alignment: <|TA_reward|>\n"
    "END\n"
)

# The same order in a few tokens: for models trained from scratch, where ~830 tokens of instructions only dilute
# the video (the tiny zoo model learns motion and text alignment with this one, not with the verbatim query).
COMPACT_QUERY = ("\nRate the video.\nVisual Quality: <|VQ_reward|>\nMotion Quality: <|MQ_reward|>\n"
                 "Textual prompt - {text_prompt}\nText Alignment: <|TA_reward|>\n")
QUERIES = {"detailed_special": VIDEOALIGN_QUERY, "compact": COMPACT_QUERY}
PROMPT_TEMPLATES = tuple(QUERIES)


# ------------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class VideoRewardConfig:
    """Everything besides weights and tokenizer that decides a VideoReward score."""

    head: str = "shared"  # "shared" (hidden -> 1 at every reward token) or "per_dim" (hidden -> 3, diagonal)
    position_ids: str = "sequential"  # "sequential" (official, transformers 4.45) or "mrope" (3-D M-RoPE)
    norm_mean: tuple[float, float, float] = RELEASE_NORM_MEAN  # (vq, mq, ta)
    norm_std: tuple[float, float, float] = RELEASE_NORM_STD
    fps: float = 2.0  # frame rule: about `fps` frames per second ...
    min_frames: int = 4  # ... an even count in [min_frames, max_frames] (VideoAlign / qwen-vl-utils)
    max_frames: int = 768
    num_frames: int | None = None  # a fixed number of uniformly spaced frames instead of the fps rule
    min_pixels: int = MIN_PIXELS  # per-frame pixel bounds of the Qwen2-VL resize
    max_pixels: int = MAX_PIXELS
    prompt_template: str = "detailed_special"
    system_prompt: str = SYSTEM_PROMPT
    padding_side: str = "right"

    def __post_init__(self):
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        if self.position_ids not in POSITION_MODES:
            raise ValueError(f"position_ids must be one of {', '.join(POSITION_MODES)}, got {self.position_ids!r}")
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"prompt_template must be one of {', '.join(PROMPT_TEMPLATES)}, "
                             f"got {self.prompt_template!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        object.__setattr__(self, "norm_mean", tuple(float(v) for v in self.norm_mean))
        object.__setattr__(self, "norm_std", tuple(float(v) for v in self.norm_std))
        if len(self.norm_mean) != 3 or len(self.norm_std) != 3 or min(self.norm_std) <= 0:
            raise ValueError(f"norm_mean/norm_std need 3 values (std > 0), got {self.norm_mean}, {self.norm_std}")
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        self.sampling()  # validates the frame rule

    @property
    def output_dim(self) -> int:
        return HEAD_KINDS[self.head]

    def sampling(self) -> FrameSampling:
        """How videos are decoded for this model (VideoAlign: about 2 fps, even count, linspace indices)."""
        if self.num_frames is not None:
            return FrameSampling(mode="count", count=int(self.num_frames))
        return FrameSampling(mode="fps", fps=float(self.fps), min_frames=int(self.min_frames),
                             max_frames=int(self.max_frames))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["norm_mean"], data["norm_std"] = list(self.norm_mean), list(self.norm_std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "VideoRewardConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VideoReward config keys: {', '.join(unknown)}")
        return cls(**data)


def normalise_rewards(raw, mean=RELEASE_NORM_MEAN, std=RELEASE_NORM_STD):
    """Raw ``[..., 3]`` (vq, mq, ta) -> ``[..., 4]`` (vq, mq, ta, overall): ``(r - mean) / std`` per dimension,
    overall the sum of the three normalised values. Works on numpy arrays (float64) and torch tensors."""
    if isinstance(raw, torch.Tensor):
        mean_t = torch.as_tensor(mean, dtype=raw.dtype, device=raw.device)
        std_t = torch.as_tensor(std, dtype=raw.dtype, device=raw.device)
        dims = (raw - mean_t) / std_t
        return torch.cat([dims, dims.sum(-1, keepdim=True)], dim=-1)
    raw = np.asarray(raw, dtype=np.float64)
    dims = (raw - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return np.concatenate([dims, dims.sum(-1, keepdims=True)], axis=-1)


# ------------------------------------------------------------------------------------------------------ prompt


def videoalign_query(prompt: str, template: str = "detailed_special") -> str:
    """The rating query for a text prompt (VQ and MQ requests first, then the prompt and the TA request)."""
    return QUERIES[template].replace("{text_prompt}", prompt)


def chat_text(prompt: str, system_prompt: str = SYSTEM_PROMPT, template: str = "detailed_special") -> str:
    """The full chat text with one ``<|video_pad|>`` placeholder (Qwen2-VL's chat template, generation prompt on)."""
    return (
        f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{videoalign_query(prompt, template)}"
        "<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------------------------------------------ batches


@dataclass
class VideoRewardBatch:
    """Model inputs for B (video, prompt) pairs; L = longest row, N = all video patches of the batch."""

    input_ids: torch.Tensor  # int64 [B, L]; padding = tokenizer pad id
    attention_mask: torch.Tensor  # int64 [B, L]; 1 = token, 0 = padding
    mm_token_type_ids: torch.Tensor  # int32 [B, L]; 2 at video tokens, 0 elsewhere
    pixel_values_videos: torch.Tensor  # float32 [N, 3*2*14*14]; videos concatenated in batch order
    video_grid_thw: torch.Tensor  # int64 [B, 3]; (frames/2, height/14, width/14) per video
    reward_positions: torch.Tensor  # int64 [B, 3]; index of the VQ, MQ, TA token in each row

    def to(self, device=None, dtype: torch.dtype | None = None) -> "VideoRewardBatch":
        """A copy on ``device``; ``dtype`` converts the pixel values only."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)}
        if dtype is not None:
            moved["pixel_values_videos"] = moved["pixel_values_videos"].to(dtype)
        return VideoRewardBatch(**moved)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of :meth:`VideoRewardModel.forward`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class VideoRewardProcessor:
    """Decoded frames + prompts -> :class:`VideoRewardBatch` (patchify, chat text, tokenize, pad)."""

    def __init__(self, tokenizer, config: VideoRewardConfig = VideoRewardConfig()):
        self.tokenizer = tokenizer
        self.config = config
        ids = tokenizer.convert_tokens_to_ids(["<|video_pad|>", *REWARD_TOKENS])
        vocab = len(tokenizer)
        if any(i is None or i == tokenizer.unk_token_id or i >= vocab for i in ids):
            raise VptError("the VideoReward tokenizer lacks <|video_pad|> or the reward tokens; "
                           "add them with tokenizer.add_special_tokens before building the model")
        self.video_token_id = int(ids[0])
        self.reward_token_ids = tuple(int(i) for i in ids[1:])
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)

    def token_ids(self, prompt: str, video_tokens: int) -> list[int]:
        """Token ids of one row: the chat text with ``<|video_pad|>`` repeated ``video_tokens`` times."""
        text = chat_text(prompt, self.config.system_prompt, self.config.prompt_template)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        at = ids.index(self.video_token_id)
        return ids[:at] + [self.video_token_id] * video_tokens + ids[at + 1:]

    def reward_positions(self, ids: Sequence[int], prompt: str) -> list[int]:
        positions = []
        for token, token_id in zip(REWARD_TOKENS, self.reward_token_ids):
            found = [i for i, value in enumerate(ids) if value == token_id]
            if len(found) != 1:
                raise VptError(f"prompt {prompt[:60]!r} yields {len(found)} {token} tokens (need exactly one); "
                               "remove reward-token text from the prompt")
            positions.append(found[0])
        return positions

    def __call__(self, videos: Sequence[np.ndarray], prompts: Sequence[str],
                 padding_side: str | None = None) -> VideoRewardBatch:
        """``videos``: uint8 ``[T, H, W, 3]`` RGB frame arrays (any even or odd T >= 1); ``prompts``: one string
        each."""
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts")
        if not videos:
            raise ValueError("an empty batch")
        side = padding_side or self.config.padding_side
        if side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        rows, pixels, grids = [], [], []
        for frames, prompt in zip(videos, prompts):
            if not isinstance(prompt, str):
                raise VptError("VideoReward needs a text prompt for every video (got none); "
                               "give the videos a prompt column")
            patches = video_patches(frames, self.config.min_pixels, self.config.max_pixels)
            rows.append(self.token_ids(prompt, patches.num_tokens))
            pixels.append(patches.pixel_values)
            grids.append(patches.grid_thw)
        length = max(len(row) for row in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        positions = torch.zeros((batch, 3), dtype=torch.long)
        for b, (row, prompt) in enumerate(zip(rows, prompts)):
            offset = length - len(row) if side == "left" else 0
            input_ids[b, offset:offset + len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[b, offset:offset + len(row)] = 1
            positions[b] = torch.tensor(self.reward_positions(row, prompt)) + offset
        mm_token_type_ids = torch.where(input_ids == self.video_token_id, 2, 0).to(torch.int32)
        mm_token_type_ids[attention_mask == 0] = 0
        return VideoRewardBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values_videos=torch.from_numpy(np.concatenate(pixels)),
            video_grid_thw=torch.tensor(grids, dtype=torch.long),
            reward_positions=positions,
        )


# --------------------------------------------------------------------------------------------------------- model


def _lora_key_filter(key: str) -> bool:
    return ".lora_" in key


class VideoRewardModel(nn.Module):
    """Qwen2-VL + reward tokens + a linear head; ``forward(**batch.model_inputs())`` -> raw ``[B, 3]``."""

    def __init__(self, backbone, tokenizer, config: VideoRewardConfig = VideoRewardConfig(),
                 head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone  # Qwen2VLForConditionalGeneration, or a peft PeftModel around one
        self.config = config
        self.tokenizer = tokenizer
        self.processor = VideoRewardProcessor(tokenizer, config)
        hidden = self.qwen.config.text_config.hidden_size
        if head is None:
            head = nn.Linear(hidden, config.output_dim, bias=False)
            head.to(device=self.qwen.device, dtype=self.qwen.dtype)
        if tuple(head.weight.shape) != (config.output_dim, hidden) or head.bias is not None:
            raise ValueError(f"head must be a bias-free Linear({hidden}, {config.output_dim})")
        self.head = head
        self.base_path: str | None = None  # where the base Qwen2-VL of a LoRA model lives on disk, when known
        vocab = self.qwen.get_input_embeddings().weight.shape[0]
        video_id = self.qwen.config.video_token_id
        if max(self.processor.reward_token_ids) >= vocab or self.processor.video_token_id != video_id:
            raise ValueError("tokenizer and Qwen2-VL config disagree (reward tokens outside the embedding, or "
                             "another <|video_pad|> id); resize the embeddings / fix video_token_id")

    # -- structure

    @property
    def qwen(self):
        """The ``Qwen2VLForConditionalGeneration`` (inside the peft wrapper when LoRA is on)."""
        backbone = self.backbone
        return backbone.get_base_model() if hasattr(backbone, "peft_config") else backbone

    @property
    def has_lora(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    @property
    def reward_token_ids(self) -> tuple[int, int, int]:
        return self.processor.reward_token_ids

    @property
    def sampling(self) -> FrameSampling:
        return self.config.sampling()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def with_config(self, **changes) -> "VideoRewardModel":
        """Change config fields that do not touch the weights (positions, norm stats, frame rule, pixel bounds,
        padding side) in place; returns the model."""
        if "head" in changes and changes["head"] != self.config.head:
            raise ValueError("the head kind is part of the weights; build another model")
        self.config = replace(self.config, **changes)
        self.processor = VideoRewardProcessor(self.tokenizer, self.config)
        return self

    # -- LoRA

    def enable_lora(self, r: int = 64, alpha: float = 128, dropout: float = 0.05, targets: Sequence[str] | None = None,
                    use_rslora: bool = False) -> "VideoRewardModel":
        """Wrap the backbone with a peft LoRA adapter (VideoAlign: r 64, alpha 128 on every language-model linear).

        ``targets`` are full module names; default :func:`videoalign_lora_targets`. peft freezes the other weights.
        """
        from peft import LoraConfig, get_peft_model

        if self.has_lora:
            raise ValueError("the model already has a LoRA adapter")
        names = list(targets) if targets is not None else videoalign_lora_targets(self.qwen)
        config = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=names,
                            bias="none", use_rslora=bool(use_rslora))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.backbone = get_peft_model(self.backbone, config)
        return self

    def merge_lora(self) -> "VideoRewardModel":
        """Fold the LoRA adapter into the weights (the model no longer has one)."""
        if self.has_lora:
            self.backbone = self.backbone.merge_and_unload()
            self.base_path = None
        return self

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The Qwen2-VL weights without LoRA (``base_layer`` weights, LoRA matrices dropped), transformers names."""
        state = self.qwen.state_dict()
        return {key.replace(".base_layer.", "."): value for key, value in state.items() if not _lora_key_filter(key)}

    # -- forward

    def find_reward_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, 3]``: the index of the VQ, MQ, TA token in each row (exactly one each, else ValueError)."""
        columns = []
        for token, token_id in zip(REWARD_TOKENS, self.reward_token_ids):
            mask = input_ids == token_id
            if not bool((mask.sum(dim=1) == 1).all()):
                raise ValueError(f"every row needs exactly one {token} token")
            columns.append(mask.int().argmax(dim=1))
        return torch.stack(columns, dim=1)

    def hidden_states(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw, mm_token_type_ids=None):
        """Last-layer hidden states ``[B, L, hidden]`` (after the final norm)."""
        language = self.qwen.model
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixel_values_videos,
                      video_grid_thw=video_grid_thw, use_cache=False)
        if mm_token_type_ids is None:
            mm_token_type_ids = torch.where(input_ids == self.qwen.config.video_token_id, 2, 0).to(torch.int32)
        kwargs["mm_token_type_ids"] = mm_token_type_ids
        if self.config.position_ids == "sequential":
            kwargs["position_ids"] = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        return language(**kwargs).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values_videos: torch.Tensor,
                video_grid_thw: torch.Tensor, mm_token_type_ids: torch.Tensor | None = None,
                reward_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Raw scores ``[B, 3]`` (vq, mq, ta) from a :class:`VideoRewardBatch`'s tensors."""
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values_videos, video_grid_thw, mm_token_type_ids)
        if reward_positions is None:
            reward_positions = self.find_reward_positions(input_ids)
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        at_tokens = hidden[rows, reward_positions.to(hidden.device)]  # [B, 3, hidden]
        scores = self.head(at_tokens.to(self.head.weight.dtype))  # [B, 3, 1] or [B, 3, 3]
        return scores[..., 0] if self.config.head == "shared" else scores.diagonal(dim1=1, dim2=2)

    def normalise(self, raw):
        """Raw ``[B, 3]`` -> ``[B, 4]`` (vq, mq, ta, overall) with this model's norm stats."""
        return normalise_rewards(raw, self.config.norm_mean, self.config.norm_std)

    def raw_scores(self, videos: Sequence[np.ndarray], prompts: Sequence[str], batch_size: int = 4) -> torch.Tensor:
        """Raw float32 scores ``[B, 3]`` of decoded videos (no gradients), ``batch_size`` videos per forward."""
        out = []
        with torch.no_grad():
            for start in range(0, len(videos), batch_size):
                batch = self.processor(videos[start:start + batch_size], prompts[start:start + batch_size])
                batch = batch.to(self.device, dtype=self.dtype)
                out.append(self(**batch.model_inputs()).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, 3))


def videoalign_lora_targets(qwen, exclude: Sequence[str] = DEFAULT_LORA_EXCLUDE,
                            num_lora_modules: int = -1) -> list[str]:
    """VideoAlign's LoRA targets: every ``nn.Linear`` / ``nn.Embedding`` whose *official* (transformers 4.45) name
    contains none of ``exclude`` (``lm_head``, ``rm_head``, ``embed_tokens``, ``visual`` by default, i.e. the
    language model's q/k/v/o and gate/up/down projections), the last ``num_lora_modules`` when positive. Returns
    current module names of ``qwen``."""
    names = []
    for name, module in qwen.named_modules():
        if name.endswith(".base_layer"):  # a module peft already wrapped: count the original once
            name = name[: -len(".base_layer")]
        elif any(part.startswith("lora_") for part in name.split(".")):
            continue
        if isinstance(module, (nn.Linear, nn.Embedding)) and not any(word in current_to_official_key(name)
                                                                   for word in exclude):
            names.append(name)
    if num_lora_modules > 0:
        names = names[-num_lora_modules:]
    return names


# -------------------------------------------------------------------------------------------------- key renaming


def official_to_current_key(key: str) -> str:
    """A Qwen2-VL key of transformers 4.45 (VideoAlign) -> transformers >= 4.52 (as 5.x names modules).

    ``model.embed_tokens|layers|norm.*`` -> ``model.language_model.*``, ``visual.*`` -> ``model.visual.*``,
    ``lm_head.*`` unchanged; keys already in the new layout are unchanged. No peft prefix (strip it first).
    """
    if key.startswith(("model.language_model.", "model.visual.")):
        return key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key


def current_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_current_key`: transformers >= 4.52 Qwen2-VL key -> 4.45 (VideoAlign) key."""
    if key.startswith("model.visual.") or key == "model.visual":
        return key[len("model."):]
    if key.startswith("model.language_model.") or key == "model.language_model":
        return "model." + key[len("model.language_model."):]
    return key


_LORA_PART = r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)"


def _insert_adapter_name(key: str, adapter: str = "default") -> str:
    """``...q_proj.lora_A.weight`` -> ``...q_proj.lora_A.default.weight`` (peft's in-memory key; files omit it)."""
    return re.sub(rf"({_LORA_PART})(?=\.|$)", rf"\1.{adapter}", key, count=1)


def _remove_adapter_name(key: str, adapter: str = "default") -> str:
    """Inverse of :func:`_insert_adapter_name`."""
    return re.sub(rf"({_LORA_PART})\.{re.escape(adapter)}(?=\.|$)", r"\1", key, count=1)


def _official_to_model_key(key: str, lora: bool) -> str:
    """An official state-dict key -> the key in :class:`VideoRewardModel`'s state dict."""
    rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    if rest.startswith("rm_head."):
        return "head." + rest[len("rm_head."):]
    return "backbone." + (PEFT_PREFIX if lora else "") + official_to_current_key(rest)


def _model_to_official_key(key: str, lora: bool) -> str:
    prefix = PEFT_PREFIX if lora else ""
    if key.startswith("head."):
        return prefix + "rm_head." + key[len("head."):]
    rest = key[len("backbone."):]
    if lora:
        rest = rest[len(PEFT_PREFIX):]
    return prefix + current_to_official_key(rest)


# --------------------------------------------------------------------------------------------------- tiny model

TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
}
TINY_VISION = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2}
TINY_LORA = {"r": 4, "alpha": 8}
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
TINY_TOKENIZER_VOCAB = 2000


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process (Qwen-like): toy prompts, generic words and the VideoAlign chat
    text; Qwen's special tokens get ids 0..6 and the three reward tokens are added after training, as VideoAlign
    adds them to Qwen2-VL's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vpt.models.zoo import tokenizer_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_TOKENIZER_VOCAB, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(tokenizer_corpus() + [chat_text("{text_prompt}")] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   model_max_length=32768, padding_side="right")
    fast.add_special_tokens({"extra_special_tokens": list(REWARD_TOKENS)})
    return fast


def tiny_qwen_config(tokenizer):
    """A tiny Qwen2-VL config whose special-token ids come from ``tokenizer``."""
    from transformers import Qwen2VLConfig

    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))))
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)
    vision = dict(TINY_VISION, hidden_size=TINY_TEXT["hidden_size"])
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)


def build_tiny_videoreward(out_dir: str | os.PathLike | None = None, seed: int = 0, lora: bool = True,
                           config: VideoRewardConfig = VideoRewardConfig()) -> VideoRewardModel:
    """A tiny random VideoReward, deterministic from ``seed`` (global torch RNG untouched), in eval mode.

    Qwen2-VL: hidden 64, 2 layers, 4 heads (2 kv), vision depth 2 / width 32; a forward on 8 frames of 56x56 with
    VideoAlign's query (~850 tokens) takes a few ms on one thread. With ``lora`` the model has the official
    structure: a LoRA adapter (r 4, alpha 8, B non-zero as if trained) on the language model's linears, over a base.
    With ``out_dir`` it is also saved there in our layout (the base inside, ``DIR/base``).
    """
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        qwen = Qwen2VLForConditionalGeneration(tiny_qwen_config(tokenizer)).eval()
        model = VideoRewardModel(qwen, tokenizer, config)
        with torch.no_grad():
            model.head.weight.normal_(0.0, 1.0 / math.sqrt(model.head.weight.shape[1]))
        if lora:
            model.enable_lora(r=TINY_LORA["r"], alpha=TINY_LORA["alpha"], dropout=0.0)
            with torch.no_grad():
                for name, parameter in model.backbone.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0.0, 0.05)
    model.eval()
    if out_dir is not None:
        save_videoreward(model, out_dir, save_base=True)
    return model


# ------------------------------------------------------------------------------------------------ saving: ours


def _quiet():
    from vpt.models.loading import quiet_loading

    return quiet_loading()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _save_base(model: VideoRewardModel, directory: Path) -> None:
    """The base Qwen2-VL (no LoRA) as a save_pretrained-style directory: config.json + model.safetensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    qwen = model.qwen
    state = model.base_state_dict()
    if qwen.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    qwen.config.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)


def _non_lora_tensors(model: VideoRewardModel) -> dict[str, torch.Tensor]:
    qwen = model.qwen
    tensors = {}
    for key, value in qwen.model.visual.state_dict().items():
        tensors["model.visual." + key.replace(".base_layer.", ".")] = value
    tensors = {k: v for k, v in tensors.items() if not _lora_key_filter(k)}
    rows = qwen.get_input_embeddings().weight[list(model.reward_token_ids)]
    tensors["reward_token_embeddings"] = rows
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _relative_or_absolute(path: Path, root: Path) -> str:
    path, root = path.resolve(), root.resolve()
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def save_videoreward(model: VideoRewardModel, directory: str | os.PathLike, save_base: bool | None = None) -> Path:
    """Save in our layout (see the module docstring), atomically (the directory appears complete or not at all).

    A LoRA model stores its adapter, the non-LoRA trained weights (vision tower + merger, reward-token embedding
    rows, head) and where its base lives: ``model.base_path`` (absolute), or a copy in ``DIR/base`` when
    ``save_base`` is true, the model has no known base path, or the base path lies inside ``directory``.
    """
    from safetensors.torch import save_file

    from vpt.io.atomic import atomic_directory

    target = Path(directory)
    base_path = Path(model.base_path).resolve() if model.base_path else None
    inside = base_path is not None and target.resolve() in (base_path, *base_path.parents)
    write_base = model.has_lora and (bool(save_base) or base_path is None or inside)
    with atomic_directory(target, replace=True) as temporary:
        model.tokenizer.save_pretrained(temporary / "tokenizer")
        save_file({"weight": model.head.weight.detach().contiguous().cpu()}, str(temporary / "head.safetensors"),
                  metadata={"format": "pt"})
        if model.has_lora:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.backbone.save_pretrained(temporary / "adapter")
            (temporary / "adapter" / "README.md").unlink(missing_ok=True)
            save_file(_non_lora_tensors(model), str(temporary / "non_lora.safetensors"), metadata={"format": "pt"})
            if write_base:
                _save_base(model, temporary / "base")
                base_entry = "base"
            else:
                base_entry = str(base_path)
            weights = {"kind": "lora", "base": base_entry, "adapter": "adapter", "non_lora": "non_lora.safetensors"}
        else:
            with _quiet():
                model.qwen.save_pretrained(temporary / "backbone")
            weights = {"kind": "full", "backbone": "backbone"}
        _write_json(temporary / CONFIG_FILE, {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(),
            "weights": weights,
            "head": "head.safetensors",
            "tokenizer": "tokenizer",
            "reward_tokens": dict(zip(REWARD_TOKENS, model.reward_token_ids)),
            "vocab_size": int(model.qwen.get_input_embeddings().weight.shape[0]),
        })
    if model.has_lora and write_base:
        model.base_path = str((target / "base").resolve())
    return target


# ------------------------------------------------------------------------------------------------ loading


def _read_json(path: Path) -> dict:
    return read_json_object(path, "the checkpoint file", "re-export the checkpoint")


def _torch_load(path: Path) -> dict:
    """A ``.pth`` state dict, read with ``weights_only=True`` (plain tensors only; nothing is executed)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VptError(f"{path}: missing; the checkpoint is incomplete") from None
    except Exception as error:  # pickle.UnpicklingError, RuntimeError for truncated zips, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VptError(f"{path}: not a readable tensor state dict (torch.load weights_only=True: {reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VptError(f"{path}: not a state dict of tensors")
    return state


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as error:
        raise VptError(f"{path}: not a readable tokenizer directory ({type(error).__name__})") from None
    missing = [token for token in REWARD_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": list(REWARD_TOKENS)}, replace_extra_special_tokens=False)
    return tokenizer


def _load_qwen(path: Path, dtype: torch.dtype, vocab_size: int | None):
    """``Qwen2VLForConditionalGeneration.from_pretrained`` (local only), embeddings resized to ``vocab_size``."""
    from transformers import Qwen2VLForConditionalGeneration

    if not (path / "config.json").is_file():
        raise VptError(f"{path}: not a Qwen2-VL model directory (config.json missing)")
    try:
        with _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qwen = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    except VptError:
        raise
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VptError(f"{path}: not a loadable Qwen2-VL model ({reason})") from None
    if vocab_size is not None and qwen.get_input_embeddings().weight.shape[0] != vocab_size:
        qwen.resize_token_embeddings(vocab_size, mean_resizing=False)
    return qwen.eval()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise VptError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except Exception as error:
        raise VptError(f"{path}: not a readable safetensors file ({type(error).__name__})") from None


def _load_ours(directory: Path, dtype: torch.dtype, base: str | os.PathLike | None) -> VideoRewardModel:
    meta = _read_json(directory / CONFIG_FILE)
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise VptError(f"{directory / CONFIG_FILE}: format {meta.get('format')!r} version "
                       f"{meta.get('format_version')!r} is not {FORMAT_NAME} v{FORMAT_VERSION}; re-save it")
    try:
        config = VideoRewardConfig.from_dict(meta.get("config", {}))
    except (TypeError, ValueError) as error:
        raise VptError(f"{directory / CONFIG_FILE}: bad config ({error})") from None
    tokenizer = _load_tokenizer(directory / meta.get("tokenizer", "tokenizer"))
    weights = meta.get("weights", {})
    kind = weights.get("kind")
    head = _load_safetensors(directory / meta.get("head", "head.safetensors"))
    if kind == "full":
        qwen = _load_qwen(directory / weights.get("backbone", "backbone"), dtype, None)
        model = VideoRewardModel(qwen, tokenizer, config)
    elif kind == "lora":
        from peft import PeftModel

        base_dir = Path(base) if base is not None else _resolve_base(weights.get("base"), directory)
        qwen = _load_qwen(base_dir, dtype, int(meta.get("vocab_size", len(tokenizer))))
        non_lora = _load_safetensors(directory / weights.get("non_lora", "non_lora.safetensors"))
        rows = non_lora.pop("reward_token_embeddings", None)
        visual = {k[len("model.visual."):]: v for k, v in non_lora.items() if k.startswith("model.visual.")}
        _load_into(qwen.model.visual, visual, directory / weights.get("non_lora", "non_lora.safetensors"))
        model = VideoRewardModel(qwen, tokenizer, config)
        if rows is not None:
            with torch.no_grad():
                embedding = qwen.get_input_embeddings().weight
                embedding[list(model.reward_token_ids)] = rows.to(embedding.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.backbone = PeftModel.from_pretrained(qwen, directory / weights.get("adapter", "adapter"),
                                                       is_trainable=False)
        model.base_path = str(base_dir.resolve())
    else:
        raise VptError(f"{directory / CONFIG_FILE}: unknown weights kind {kind!r} (expected 'full' or 'lora')")
    with torch.no_grad():
        weight = head.get("weight")
        if weight is None or tuple(weight.shape) != tuple(model.head.weight.shape):
            raise VptError(f"{directory / meta.get('head', 'head.safetensors')}: head weight missing or of the "
                           f"wrong shape (need {tuple(model.head.weight.shape)})")
        model.head.weight.copy_(weight)
    return model.to(dtype).eval()


def _resolve_base(name, directory: Path) -> Path:
    if not name:
        raise VptError(f"{directory}: no base model recorded; pass base=DIR")
    candidate = Path(name)
    for option in ((candidate,) if candidate.is_absolute() else (directory / candidate, candidate)):
        if (option / "config.json").is_file():
            return option
    raise VptError(f"{directory}: base model {str(name)!r} is not a local Qwen2-VL directory; "
                   "download it and pass base=DIR")


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        reason = first[1].strip() if len(first) > 1 else first[0]
        raise VptError(f"{source}: does not fit the model ({reason})") from None


def load_videoreward(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     base: str | os.PathLike | None = None, step: int | None = None) -> VideoRewardModel:
    """Load a VideoReward in eval mode: our layout, VideoAlign's (``model.pth`` or adapter + non-LoRA), or a zoo.

    ``path``: a directory with ``vpt_videoreward.json``; a VideoAlign directory (``model_config.json`` and
    ``checkpoint-*/``; ``step`` picks a checkpoint, default the latest) or one of its ``checkpoint-*`` folders; or a
    zoo directory (its ``videoreward`` component). ``base``: the base Qwen2-VL directory when the checkpoint's own
    reference is not local. Raises :class:`VptError` with a one-line message for anything else.
    """
    directory = Path(path)
    if not directory.is_dir():
        reason = "not a directory" if directory.exists() else "no such directory"
        raise VptError(f"{directory}: not a VideoReward checkpoint ({reason}); {_HINT}")
    if (directory / "zoo.json").is_file() and (directory / "videoreward" / CONFIG_FILE).is_file():
        directory = directory / "videoreward"
    if (directory / CONFIG_FILE).is_file():
        model = _load_ours(directory, dtype, base)
    elif (directory / OFFICIAL_CONFIG).is_file() or (
            directory.name.startswith("checkpoint-") and (directory.parent / OFFICIAL_CONFIG).is_file()):
        model = _load_official(directory, dtype, base, step)
    else:
        raise VptError(f"{directory}: not a VideoReward checkpoint (neither {CONFIG_FILE} nor VideoAlign's "
                       f"{OFFICIAL_CONFIG} found); {_HINT}")
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------- VideoAlign layout


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else None


def _official_checkpoint(directory: Path, step: int | None) -> tuple[Path, Path]:
    """(root with model_config.json, chosen checkpoint-* folder)."""
    if directory.name.startswith("checkpoint-") and not (directory / OFFICIAL_CONFIG).is_file():
        return directory.parent, directory
    complete = []
    for child in directory.iterdir():
        number = _checkpoint_step(child)
        if number is None or not child.is_dir():
            continue
        if (child / "model.pth").is_file() or ((child / "adapter_model.safetensors").is_file()
                                               and (child / "non_lora_state_dict.pth").is_file()):
            complete.append((number, child))
    if not complete:
        raise VptError(f"{directory}: VideoAlign checkpoint has no checkpoint-*/ folder with model.pth or "
                       "adapter_model.safetensors + non_lora_state_dict.pth")
    complete.sort()
    if step is None or step == -1:
        return directory, complete[-1][1]
    for number, child in complete:
        if number == step:
            return directory, child
    raise VptError(f"{directory}: no checkpoint-{step}/ (have: {', '.join(str(n) for n, _ in complete)})")


def _official_settings(root: Path) -> dict:
    """What VideoAlign's ``model_config.json`` says, checked and mapped to our names."""
    file = root / OFFICIAL_CONFIG
    raw = _read_json(file)
    data, model_cfg = raw.get("data_config") or {}, raw.get("model_config") or {}
    peft_cfg, inference = raw.get("peft_lora_config") or {}, raw.get("inference_config")
    if not model_cfg.get("use_special_tokens", False):
        raise VptError(f"{file}: model_config.use_special_tokens is false; only VideoAlign's special-token reward "
                       "models are supported")
    output_dim = int(model_cfg.get("output_dim", 1))
    head = {1: "shared", 3: "per_dim"}.get(output_dim)
    if head is None:
        raise VptError(f"{file}: model_config.output_dim {output_dim} is not supported (need 1 or 3)")
    template = data.get("prompt_template_type", "detailed_special")
    if template not in PROMPT_TEMPLATES:
        raise VptError(f"{file}: data_config.prompt_template_type {template!r} is not supported (need "
                       f"{' or '.join(PROMPT_TEMPLATES)})")
    if inference:
        mean = tuple(float(inference[f"{d}_mean"]) for d in ("VQ", "MQ", "TA"))
        std = tuple(float(inference[f"{d}_std"]) for d in ("VQ", "MQ", "TA"))
    else:  # the official inference leaves rewards unnormalised without an inference_config
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    num_frames = data.get("num_frames")
    config = VideoRewardConfig(
        head=head, position_ids="sequential", norm_mean=mean, norm_std=std,
        fps=float(data.get("fps") or 2.0), num_frames=int(num_frames) if num_frames else None,
        max_pixels=int(data.get("max_frame_pixels") or MAX_PIXELS), prompt_template=template,
    )
    exclude = peft_cfg.get("lora_namespan_exclude")
    if isinstance(exclude, str):
        try:
            exclude = ast.literal_eval(exclude)
        except (ValueError, SyntaxError):
            raise VptError(f"{file}: peft_lora_config.lora_namespan_exclude {exclude!r} is not a list") from None
    exclude = list(exclude or [])
    if not peft_cfg.get("vision_lora", False) and "visual" not in exclude:
        exclude.append("visual")
    lora = None
    if peft_cfg.get("lora_enable", False):
        lora = {"r": int(peft_cfg.get("lora_r", 64)), "alpha": float(peft_cfg.get("lora_alpha", 128)),
                "dropout": float(peft_cfg.get("lora_dropout", 0.05)), "use_rslora": bool(peft_cfg.get("use_rslora")),
                "exclude": exclude, "num_lora_modules": int(peft_cfg.get("num_lora_modules", -1))}
    return {"config": config, "base": model_cfg.get("model_name_or_path"), "lora": lora}


def _official_tokenizer(checkpoint: Path, base_dir: Path):
    for option in (checkpoint / "tokenizer", checkpoint):
        if (option / "tokenizer.json").is_file() or (option / "tokenizer_config.json").is_file():
            return _load_tokenizer(option)
    return _load_tokenizer(base_dir)


def _load_official(directory: Path, dtype: torch.dtype, base, step: int | None) -> VideoRewardModel:
    root, checkpoint = _official_checkpoint(directory, step)
    settings = _official_settings(root)
    base_dir = Path(base) if base is not None else _resolve_base(settings["base"], root)
    tokenizer = _official_tokenizer(checkpoint, base_dir)
    qwen = _load_qwen(base_dir, dtype, len(tokenizer))
    model = VideoRewardModel(qwen, tokenizer, settings["config"])
    lora = settings["lora"]
    if lora is not None:
        targets = videoalign_lora_targets(model.qwen, lora["exclude"], lora["num_lora_modules"])
        model.enable_lora(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], targets=targets,
                          use_rslora=lora["use_rslora"])
        model.base_path = str(base_dir.resolve())
    full = checkpoint / "model.pth"
    if full.is_file():
        incoming = {_official_to_model_key(k, lora is not None): v for k, v in _torch_load(full).items()}
        sources = [full]
    else:
        adapter = checkpoint / "adapter_model.safetensors"
        non_lora = checkpoint / "non_lora_state_dict.pth"
        incoming = {_official_to_model_key(k, lora is not None): v for k, v in _torch_load(non_lora).items()}
        if lora is None:
            raise VptError(f"{root / OFFICIAL_CONFIG}: peft_lora_config.lora_enable is false but {checkpoint.name} "
                           "holds a LoRA adapter")
        incoming.update({_insert_adapter_name(_official_to_model_key(k, True)): v
                         for k, v in _load_safetensors(adapter).items()})
        sources = [adapter, non_lora]
    state = model.state_dict()
    unknown = sorted(set(incoming) - set(state))
    if unknown:
        raise VptError(f"{sources[-1]}: {len(unknown)} keys do not fit the model (first: {unknown[0]!r}); "
                       "check model_config.json against the checkpoint")
    if full.is_file():
        missing = sorted(k for k in set(state) - set(incoming) if not k.endswith("lm_head.weight"))
        if missing:
            raise VptError(f"{full}: {len(missing)} model weights missing (first: {missing[0]!r})")
    bad = [k for k, v in incoming.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        raise VptError(f"{sources[-1]}: {bad[0]!r} has shape {tuple(incoming[bad[0]].shape)}, the model needs "
                       f"{tuple(state[bad[0]].shape)}")
    state.update(incoming)
    tied = {k for k in state if k.endswith("lm_head.weight")} if model.qwen.config.tie_word_embeddings else set()
    for key in tied:  # the output layer shares the embedding: load the embedding only
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise VptError(f"{sources[-1]}: does not fit the model (missing {sorted(set(missing) - tied)[:1]}, "
                       f"unexpected {sorted(unexpected)[:1]})")
    return model.to(dtype)


def _official_model_config(model: VideoRewardModel, base_name: str, lora: dict | None) -> dict:
    config = model.config
    sampling_frames = config.num_frames
    return {
        "data_config": {
            "meta_data": None, "data_dir": None, "meta_data_test": None,
            "max_frame_pixels": int(config.max_pixels), "num_frames": sampling_frames,
            "fps": None if sampling_frames else float(config.fps),
            "p_shuffle_frames": 0.0, "p_color_jitter": 0.0,
            "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": config.prompt_template,
            "add_noise": False, "sample_type": "uniform", "use_tied_data": True,
        },
        "training_args": {"output_dir": ".", "bf16": False, "fp16": False, "disable_flash_attn2": True,
                          "gradient_checkpointing": False},
        "model_config": {
            "model_name_or_path": base_name, "model_revision": "main", "output_dim": config.output_dim,
            "use_special_tokens": True, "reward_token": "special", "loss_type": "btt",
            "freeze_vision_tower": False, "freeze_llm": False, "tune_merger": True, "torch_dtype": None,
        },
        "peft_lora_config": {
            "lora_enable": lora is not None, "vision_lora": False,
            "lora_r": lora["r"] if lora else 64, "lora_alpha": lora["alpha"] if lora else 128,
            "lora_dropout": lora["dropout"] if lora else 0.05, "lora_target_modules": None,
            "lora_namespan_exclude": list(DEFAULT_LORA_EXCLUDE), "lora_modules_to_save": None,
            "lora_task_type": "CAUSAL_LM", "use_rslora": lora["use_rslora"] if lora else False,
            "num_lora_modules": -1,
        },
        "inference_config": {f"{d}_{kind}": float(stats[i]) for i, d in enumerate(("VQ", "MQ", "TA"))
                             for kind, stats in (("mean", config.norm_mean), ("std", config.norm_std))},
    }


def export_videoalign(model: VideoRewardModel, directory: str | os.PathLike, layout: str = "adapter", step: int = 1,
                      base_name: str = "base") -> Path:
    """Write ``model`` in VideoAlign's layout (atomically): ``model_config.json``, ``base/`` (the base Qwen2-VL and
    tokenizer, referenced as ``model_name_or_path = base_name``) and ``checkpoint-<step>/`` with the tokenizer and
    either ``model.pth`` (``layout="full"``; peft-wrapped keys when the model has LoRA) or
    ``adapter_model.safetensors`` + ``non_lora_state_dict.pth`` (``layout="adapter"``, LoRA models only).

    Keys use transformers 4.45 names, so VideoAlign's own loader (a ``Qwen2VLRewardModelBT`` of that era) reads them.
    The LoRA targets must follow VideoAlign's rule (:func:`videoalign_lora_targets`) for its loader to rebuild them.
    """
    from safetensors.torch import save_file

    from vpt.io.atomic import atomic_directory

    if layout not in ("adapter", "full"):
        raise ValueError(f"layout must be 'adapter' or 'full', got {layout!r}")
    if layout == "adapter" and not model.has_lora:
        raise ValueError("the adapter layout needs a model with a LoRA adapter (use layout='full')")
    lora = None
    if model.has_lora:
        peft_config = model.backbone.peft_config["default"]
        targets = sorted(peft_config.target_modules) if not isinstance(peft_config.target_modules, str) else None
        if targets is None or set(targets) != set(videoalign_lora_targets(model.qwen)):
            raise ValueError("the LoRA targets differ from VideoAlign's rule; VideoAlign's loader could not rebuild "
                             "them (enable_lora with the default targets)")
        alpha = float(peft_config.lora_alpha)
        lora = {"r": int(peft_config.r), "alpha": int(alpha) if alpha.is_integer() else alpha,
                "dropout": float(peft_config.lora_dropout), "use_rslora": bool(peft_config.use_rslora)}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    official = {_model_to_official_key(k, lora is not None): v for k, v in state.items()}
    target = Path(directory)
    with atomic_directory(target, replace=True) as temporary:
        _write_json(temporary / OFFICIAL_CONFIG, _official_model_config(model, base_name, lora))
        _save_base(model, temporary / base_name)
        checkpoint = temporary / f"checkpoint-{int(step)}"
        checkpoint.mkdir()
        model.tokenizer.save_pretrained(checkpoint / "tokenizer")
        if layout == "full":
            torch.save(official, checkpoint / "model.pth")
        else:
            adapter = {_remove_adapter_name(k): v for k, v in official.items() if _lora_key_filter(k)}
            save_file(adapter, str(checkpoint / "adapter_model.safetensors"), metadata={"format": "pt"})
            trained = ("visual.", "model.embed_tokens.", "rm_head.")
            non_lora = {k: v for k, v in official.items()
                        if not _lora_key_filter(k) and k[len(PEFT_PREFIX):].startswith(trained)}
            torch.save(non_lora, checkpoint / "non_lora_state_dict.pth")
            _write_json(checkpoint / "adapter_config.json", {
                "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
                "r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"], "bias": "none",
                "use_rslora": lora["use_rslora"], "fan_in_fan_out": False, "inference_mode": True,
                "modules_to_save": None, "init_lora_weights": True,
                "target_modules": sorted(current_to_official_key(n) for n in videoalign_lora_targets(model.qwen)),
            })
    return target


# ---------------------------------------------------------------------------------------------------------- zoo


def write_zoo_videoreward(out_dir: str | os.PathLike, seed: int) -> dict[str, dict]:
    """The tiny zoo's VideoReward components: ``out_dir/videoreward`` (our layout, LoRA over ``base/`` inside) and
    ``out_dir/videoreward-official`` (VideoAlign's adapter layout) holding the same weights; ``zoo.json`` entries."""
    from vpt.models.zoo import component_seed

    out_dir = Path(out_dir)
    model = build_tiny_videoreward(seed=component_seed(seed, "videoreward"))
    save_videoreward(model, out_dir / "videoreward", save_base=True)
    export_videoalign(model, out_dir / "videoreward-official", layout="adapter", step=1)
    qwen = model.qwen
    common = {
        "class": "VideoRewardModel",
        "base_class": "Qwen2VLForConditionalGeneration",
        "head": model.config.head,
        "position_ids": model.config.position_ids,
        "lora": dict(TINY_LORA),
        "hidden_size": qwen.config.text_config.hidden_size,
        "tokenizer_vocab": len(model.tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "load": "vpt.models.videoreward.load_videoreward(path)",
    }
    return {
        "videoreward": {"path": "videoreward", "format": FORMAT_NAME, **common},
        "videoreward-official": {"path": "videoreward-official", "format": "videoalign", "layout": "adapter",
                                 **common},
    }
