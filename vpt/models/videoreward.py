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
:mod:`vpt.models.videoreward_checkpoint` saves and loads our layout (and finds the layout of any directory:
``load_videoreward``); :mod:`vpt.models.videoalign` reads and writes VideoAlign's. Both store the base Qwen2-VL and
the tokenizer with the reward tokens the way this module loads them (:func:`load_base_qwen`,
:func:`load_reward_tokenizer`, :func:`save_base_qwen`).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from vpt.errors import VptError
from vpt.io.video import FrameSampling
from vpt.models.loading import quiet_loading
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
    "chat_text",
    "current_to_official_key",
    "load_base_qwen",
    "load_reward_tokenizer",
    "normalise_rewards",
    "official_to_current_key",
    "resolve_base_directory",
    "save_base_qwen",
    "videoalign_lora_targets",
    "videoalign_query",
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


def is_lora_key(key: str) -> bool:
    """Whether a state-dict key names one of peft's LoRA tensors (not a weight the adapter wraps)."""
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
        return {key.replace(".base_layer.", "."): value for key, value in state.items() if not is_lora_key(key)}

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

# VideoAlign names Qwen2-VL's modules as transformers 4.45 did; its LoRA rule above matches those names.


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


# ------------------------------------------------------------------------------------- base model and tokenizer


def load_reward_tokenizer(path: Path):
    """The tokenizer at ``path`` (local only) with the three reward tokens, added when missing as VideoAlign adds them
    to Qwen2-VL's tokenizer."""
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


def load_base_qwen(path: Path, dtype: torch.dtype, vocab_size: int | None):
    """``Qwen2VLForConditionalGeneration.from_pretrained`` (local only), embeddings resized to ``vocab_size``."""
    from transformers import Qwen2VLForConditionalGeneration

    if not (path / "config.json").is_file():
        raise VptError(f"{path}: not a Qwen2-VL model directory (config.json missing)")
    try:
        with quiet_loading(), warnings.catch_warnings():
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


def resolve_base_directory(name, directory: Path) -> Path:
    """The local base Qwen2-VL a checkpoint in ``directory`` names: relative to ``directory``, or as given."""
    if not name:
        raise VptError(f"{directory}: no base model recorded; pass base=DIR")
    candidate = Path(name)
    for option in ((candidate,) if candidate.is_absolute() else (directory / candidate, candidate)):
        if (option / "config.json").is_file():
            return option
    raise VptError(f"{directory}: base model {str(name)!r} is not a local Qwen2-VL directory; "
                   "download it and pass base=DIR")


def save_base_qwen(model: VideoRewardModel, directory: Path) -> None:
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
