"""The tiny zoo: small models built offline, deterministically from a seed, saved in their real formats.

Nothing can be downloaded here, so every model the toolkit runs in tests and examples is built from an explicit
config and saved with ``save_pretrained``; the real loading code (``from_pretrained``) then reads it back.

Layout of a zoo directory (``build_tiny_zoo(out_dir)``)::

    out_dir/
      zoo.json        index: zoo version, seed, library versions, one entry per component, build measurements
      wan/            diffusers WanPipeline (text-to-video): model_index.json, transformer/, vae/,
                      text_encoder/ (UMT5), tokenizer/ (trained in-process), scheduler/ (flow-match Euler + shift)
      videoreward/    tiny VideoReward (VideoAlign on Qwen2-VL), our layout: LoRA adapter over base/ inside
      videoreward-official/  the same weights in VideoAlign's layout (model_config.json, base/, checkpoint-1/)
      dinov2/         tiny random transformers Dinov2Model (config.json, model.safetensors): ViPO's frozen
                      patch-feature extractor; load with ``vpt.models.loading.load_dinov2``

      clip/           tiny random transformers CLIPModel + CLIPTokenizer + preprocessor_config.json: the ``clip``
                      and ``background-consistency`` rewards (``dinov2/`` serves ``subject-consistency``)
      siglip/         tiny random SiglipModel with the same tokenizer: ``clip`` on a SigLIP checkpoint
      aesthetic/      the clip/ checkpoint plus a random LAION aesthetic head (sac+logos+ava1-l14-linearMSE.pth,
                      the public state-dict layout): the ``aesthetic`` reward

Later components go to ``out_dir/<name>`` with an entry under
``components`` in ``zoo.json``; bump :data:`ZOO_VERSION` whenever what a seed builds changes.

The VAE is *trained* briefly on toy-world clips (a random tiny Wan VAE decodes every latent to the same grey,
which would make every learning test meaningless). Its ``latents_mean`` / ``latents_std`` are the per-channel
statistics of the trained encoder on toy clips, so normalised latents are roughly N(0, 1). The build runs on one
torch thread (restored afterwards) so the weights are identical on every machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from vpt.errors import VptError

if TYPE_CHECKING:
    import torch

    from vpt.models.videoreward import VideoRewardConfig, VideoRewardModel

ZOO_VERSION = 5
"""Version of what :func:`build_tiny_zoo` produces for a seed; part of the cache key."""

DEFAULT_SHIFT = 3.0
VAE_STEPS = 300
VAE_BATCH = 4
VAE_LR = (1e-4, 1e-2)  # (most weights, RMS-norm gains + output convs)
VAE_CLIP = {"frames": 9, "height": 32, "width": 32}  # 4k+1 frames for Wan's 4x temporal compression
SPREAD_LATENTS = 16

TEXT_DIM = 32
VAE_CONFIG = {
    "base_dim": 16,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "is_residual": False,
}
TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": TEXT_DIM,
    "freq_dim": 64,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
TEXT_ENCODER_CONFIG = {
    "d_model": TEXT_DIM,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
}
DINOV2_CONFIG = {
    # 32x32 toy frames -> an 8x8 patch grid (the tiny Wan latent is 4x4 per frame); mlp_ratio 2 -> intermediate 64
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 4,
    "image_size": 32,
}
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5 / UMT5
TOKENIZER_VOCAB = 1000
TOKENIZER_MAX_LENGTH = 512

_GENERIC_TEXT = """
a video of the and with in on at from to into over under near behind between through across around toward away
one two three four five many some few several small large big tiny huge little long short tall wide narrow round
person man woman child people dog cat bird horse fish car truck bike train boat plane ball tree flower grass
water river sea ocean lake sky cloud sun moon star rain snow fire light shadow road street city house room
window door table chair book phone screen camera scene view shot close wide aerial slow motion fast quick
walking running jumping flying swimming dancing playing sitting standing falling rolling spinning turning
bouncing sliding floating drifting shaking flickering frozen smooth steady sharp blurry clear high quality
detailed realistic cinematic beautiful bright dark dim colorful black gray grey orange purple pink brown
cyan violet gold silver background foreground left right up down upward downward center middle top bottom
edge corner day night morning evening sunset sunrise summer winter spring autumn indoor outdoor
is are was were be being it its this that these those there here very not no yes
"""


def _log_to(log: Callable[[str], None] | None) -> Callable[[str], None]:
    return log if log is not None else (lambda message: None)


def component_seed(seed: int, name: str) -> int:
    """A stable 63-bit seed for one component of the build (independent of Python's hash seed)."""
    digest = hashlib.sha256(f"vpt-zoo:{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def _deterministic_torch(threads: int = 1) -> Iterator[None]:
    """One torch thread and a private global RNG for the duration; both restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------- tokenizer + text


def tokenizer_corpus() -> list[str]:
    """Training text for the tiny tokenizer: every toy-world prompt plus generic video-prompt words."""
    from vpt.toyworld import all_prompts

    generic = _GENERIC_TEXT.split()
    lines = all_prompts()
    lines += [" ".join(generic[i : i + 12]) for i in range(0, len(generic), 12)]
    return lines


def build_tokenizer(max_length: int = TOKENIZER_MAX_LENGTH):
    """A small BPE tokenizer trained in-process (T5-like: lowercase, metaspace, ``</s>`` appended, pad id 0)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/")
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer)
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
        padding_side="right",
    )


def build_text_encoder(vocab_size: int, seed: int):
    """A tiny UMT5 encoder (``text_dim`` = d_model), randomly initialised from ``seed``."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
        **TEXT_ENCODER_CONFIG,
    )
    torch.manual_seed(seed)
    return UMT5EncoderModel(config).eval()


def build_transformer(latent_channels: int, seed: int):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(in_channels=latent_channels, out_channels=latent_channels, **TRANSFORMER_CONFIG).eval()


def build_scheduler(shift: float = DEFAULT_SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=float(shift))


# --------------------------------------------------------------------------------------------------------- VAE


def build_vae(seed: int):
    """The tiny Wan VAE, untrained (identity latent statistics until :func:`train_vae` sets them)."""
    import torch
    from diffusers import AutoencoderKLWan

    z_dim = VAE_CONFIG["z_dim"]
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE_CONFIG, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    with torch.no_grad():
        # Start with a small posterior variance: the sampled latent carries the mean's information from step one.
        vae.quant_conv.bias[z_dim:] = -8.0
    return vae.eval()


def clips_tensor(clips) -> "torch.Tensor":
    """uint8 clips [N][T, H, W, 3] -> float [N, 3, T, H, W] in [-1, 1] (the VAE's pixel range)."""
    import numpy as np
    import torch

    array = np.stack([video for _, video in clips]) if isinstance(clips[0], tuple) else np.stack(clips)
    return torch.from_numpy(array).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def _vae_clips(n: int, seed: int):
    from vpt.toyworld import toy_clips

    return clips_tensor(toy_clips(n, seed=seed, **VAE_CLIP))


def latent_statistics(vae, videos, batch: int = 16) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the encoder's posterior means over ``videos`` [N, 3, T, H, W]."""
    import torch

    with torch.no_grad():
        means = torch.cat([vae.encode(videos[i : i + batch]).latent_dist.mode() for i in range(0, len(videos), batch)])
    channels = means.transpose(0, 1).reshape(means.shape[1], -1).double()
    return channels.mean(1).tolist(), channels.std(1).clamp_min(1e-6).tolist()


def reconstruction_mse(vae, videos, batch: int = 16) -> float:
    """Mean squared pixel error of decode(encode(x).mode()) against x, pixel range [-1, 1]."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(videos), batch):
            x = videos[i : i + batch]
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
            total += float(((recon - x) ** 2).sum())
            count += x.numel()
    return total / count


def decoded_brightness(vae, n: int = SPREAD_LATENTS, seed: int = 0, frames: int = 9, height: int = 32,
                       width: int = 32) -> "torch.Tensor":
    """Mean brightness in [0, 1] of videos decoded from ``n`` random normalised latents ~ N(0, 1).

    Latents are de-normalised as WanPipeline does (``z * latents_std + latents_mean``) and decoded; pixels are
    mapped to [0, 1] as the pipeline's video processor does.
    """
    import torch

    config = vae.config
    spatial = config.scale_factor_spatial
    shape = (n, config.z_dim, (frames - 1) // config.scale_factor_temporal + 1, height // spatial, width // spatial)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(shape, generator=generator)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = torch.cat([vae.decode(latents[i : i + 8] * std + mean).sample for i in range(0, n, 8)])
    return (video / 2 + 0.5).clamp(0, 1).mean(dim=(1, 2, 3, 4))


def train_vae(vae, steps: int, seed: int, batch: int = VAE_BATCH, log: Callable[[str], None] | None = None) -> dict:
    """Train the tiny VAE on fresh toy clips: pixel MSE + a tiny KL; returns a summary.

    Adam with a higher learning rate for the RMS-norm gains and the two output convs (the decoded pixel scale must
    grow from its small initial value), linear warm-up and cosine decay, gradient clipping at 1.
    """
    import torch

    from vpt.toyworld import iter_toy_clips

    log = _log_to(log)
    stream = iter_toy_clips(component_seed(seed, "vae-data"), **VAE_CLIP)
    fast_names = ("gamma", "conv_out")
    fast = [p for name, p in vae.named_parameters() if any(key in name for key in fast_names)]
    fast_ids = {id(p) for p in fast}
    slow = [p for p in vae.parameters() if id(p) not in fast_ids]
    optimizer = torch.optim.Adam([{"params": slow, "lr": VAE_LR[0]}, {"params": fast, "lr": VAE_LR[1]}], betas=(0.9, 0.99))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(steps, 1))))
    )
    generator = torch.Generator().manual_seed(component_seed(seed, "vae-noise"))
    vae.train()
    smoothed = None
    for step in range(steps):
        x = clips_tensor([next(stream) for _ in range(batch)])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse = ((recon - x) ** 2).mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = mse + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        value = float(mse.detach())
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"  vae step {step + 1}/{steps}: train mse {smoothed:.4f}")
    vae.eval()
    return {"steps": steps, "batch": batch, "train_mse_smoothed": smoothed}


# ------------------------------------------------------------------------------------------------------ DINOv2


def build_dinov2(seed: int):
    """A tiny random DINOv2 (:data:`DINOV2_CONFIG`), initialised from ``seed``, in eval mode."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**DINOV2_CONFIG)).eval()


def _build_dinov2(out_dir: Path, seed: int) -> dict:
    model = build_dinov2(component_seed(seed, "dinov2"))
    from vpt.models.loading import quiet_loading

    with quiet_loading():
        model.save_pretrained(out_dir / "dinov2", safe_serialization=True)
    return {
        "path": "dinov2",
        "format": "transformers",
        "class": "Dinov2Model",
        "patch_size": model.config.patch_size,
        "hidden_size": model.config.hidden_size,
        "image_size": model.config.image_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "normalisation": "ImageNet mean/std",
        "load": "vpt.models.loading.load_dinov2(path)",
    }


# --------------------------------------------------------------------------------------- CLIP, SigLIP, aesthetic

CLIP_TOKENIZER_VOCAB = 1000  # 2 special + 512 byte symbols + 486 merges
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")  # ids 0, 1 (bos; eos = pad) as CLIP's own
CLIP_VISION_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 32, "patch_size": 8}
CLIP_TEXT_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": 77}
CLIP_PROJECTION_DIM = 16
SIGLIP_TEXT_LENGTH = 16  # SigLIP pads every prompt to max_position_embeddings (64 in the released models)
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"  # the LAION release's file name and state-dict layout
AESTHETIC_HEAD_WIDTHS = (1024, 128, 64, 16, 1)  # improved-aesthetic-predictor simple_inference.py: MLP


def build_clip_tokenizer():
    """A tiny CLIP tokenizer: byte-level BPE with CLIP's ``</w>`` word ends, normaliser and pre-tokeniser, as a
    transformers ``CLIPTokenizer``. Its merges are learnt here from the toy prompts and generic words by plain BPE
    (the most frequent adjacent pair, ties to the smallest pair), not by ``tokenizers``' trainer, whose order among
    equally frequent pairs changes from run to run. The vocabulary holds every byte symbol with and without
    ``</w>``, as CLIP's does, so no text is unknown."""
    from collections import Counter

    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    probe = CLIPTokenizer(vocab={token: i for i, token in enumerate(CLIP_SPECIAL_TOKENS)}, merges=[])
    normalizer, pre_tokenizer = probe.backend_tokenizer.normalizer, probe.backend_tokenizer.pre_tokenizer
    words: Counter = Counter()
    for line in tokenizer_corpus():
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = [*CLIP_SPECIAL_TOKENS, *alphabet, *(symbol + "</w>" for symbol in alphabet)]
    splits = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges: list[tuple[str, str]] = []
    while len(vocab) < CLIP_TOKENIZER_VOCAB:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(splits[word], splits[word][1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.append(best[0] + best[1])
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if tuple(symbols[i : i + 2]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges,
                         model_max_length=CLIP_TEXT_CONFIG["max_position_embeddings"])


def build_clip(vocab_size: int, seed: int):
    """A tiny random transformers ``CLIPModel`` (:data:`CLIP_VISION_CONFIG`, :data:`CLIP_TEXT_CONFIG`), eval mode."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    text = dict(CLIP_TEXT_CONFIG, vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=dict(CLIP_VISION_CONFIG),
                                projection_dim=CLIP_PROJECTION_DIM)).eval()


def build_siglip(vocab_size: int, seed: int):
    """A tiny random transformers ``SiglipModel`` of the CLIP sizes (text length :data:`SIGLIP_TEXT_LENGTH`)."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    text = dict(CLIP_TEXT_CONFIG, vocab_size=vocab_size, max_position_embeddings=SIGLIP_TEXT_LENGTH, pad_token_id=1,
                eos_token_id=1, bos_token_id=0)
    torch.manual_seed(seed)
    return SiglipModel(SiglipConfig(text_config=text, vision_config=dict(CLIP_VISION_CONFIG))).eval()


def build_aesthetic_head(embedding_dim: int, seed: int) -> dict:
    """A random LAION improved-aesthetic-predictor head as its public state dict: ``layers.{0,2,4,6,7}.{weight,
    bias}`` of Linear(D,1024), Dropout, Linear(1024,128), Dropout, Linear(128,64), Dropout, Linear(64,16),
    Linear(16,1) (``simple_inference.py``: ``MLP``)."""
    import torch

    torch.manual_seed(seed)
    widths = (embedding_dim, *AESTHETIC_HEAD_WIDTHS)
    state = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), zip(widths[:-1], widths[1:])):
        layer = torch.nn.Linear(fan_in, fan_out)
        state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = layer.weight.detach(), layer.bias.detach()
    return state


def _save_image_processor(directory: Path, side: int, mean, std) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                          image_mean=list(mean), image_std=list(std)).save_pretrained(directory)


def _build_clip_family(out_dir: Path, seed: int) -> dict[str, dict]:
    """``clip/`` (CLIPModel + tokenizer + image processor), ``siglip/`` (SiglipModel, the same tokenizer, mean/std
    0.5 as SigLIP's) and ``aesthetic/`` (the clip checkpoint + a random head in the LAION layout)."""
    import torch
    from transformers.utils import logging as transformers_logging

    from vpt.models.clip_features import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from vpt.models.loading import quiet_loading

    tokenizer = build_clip_tokenizer()
    clip = build_clip(len(tokenizer), component_seed(seed, "clip"))
    siglip = build_siglip(len(tokenizer), component_seed(seed, "siglip"))
    head = build_aesthetic_head(CLIP_PROJECTION_DIM, component_seed(seed, "aesthetic"))
    side = CLIP_VISION_CONFIG["image_size"]
    verbosity = transformers_logging.get_verbosity()
    # SiglipConfig's default text config fails transformers' own token-id check: a spurious warning on every save
    transformers_logging.set_verbosity_error()
    try:
        with quiet_loading():
            for name, model, mean, std in (("clip", clip, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                                           ("aesthetic", clip, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                                           ("siglip", siglip, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
                model.save_pretrained(out_dir / name, safe_serialization=True)
                tokenizer.save_pretrained(out_dir / name)
                _save_image_processor(out_dir / name, side, mean, std)
    finally:
        transformers_logging.set_verbosity(verbosity)
    torch.save(head, out_dir / "aesthetic" / AESTHETIC_HEAD_FILE)
    common = {"format": "transformers", "image_size": side, "projection_dim": CLIP_PROJECTION_DIM,
              "tokenizer_vocab": len(tokenizer)}
    return {
        "clip": {"path": "clip", "class": "CLIPModel", **common,
                 "parameters": sum(p.numel() for p in clip.parameters()), "load": "vpt.rewards.clip.load_clip(path)"},
        "siglip": {"path": "siglip", "class": "SiglipModel", **common, "text_length": SIGLIP_TEXT_LENGTH,
                   "parameters": sum(p.numel() for p in siglip.parameters()),
                   "load": "vpt.rewards.clip.load_clip(path)"},
        "aesthetic": {"path": "aesthetic", "class": "CLIPModel", **common, "head": AESTHETIC_HEAD_FILE,
                      "head_parameters": sum(t.numel() for t in head.values()),
                      "load": "vpt.rewards.aesthetic.load_aesthetic(path)"},
    }


# ------------------------------------------------------------------------------------------------- VideoReward

QWEN_TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
}
QWEN_VISION_CONFIG = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2}
VIDEOREWARD_LORA = {"r": 4, "alpha": 8}
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
QWEN_TOKENIZER_VOCAB = 2000


def build_qwen_tokenizer():
    """A byte-level BPE tokenizer trained in-process (Qwen-like): toy prompts, generic words and the VideoAlign chat
    text; Qwen's special tokens get ids 0..6 and the three reward tokens are added after training, as VideoAlign
    adds them to Qwen2-VL's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vpt.models.videoreward import REWARD_TOKENS, chat_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=QWEN_TOKENIZER_VOCAB, special_tokens=list(QWEN_SPECIAL_TOKENS),
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
    text = dict(QWEN_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)
    vision = dict(QWEN_VISION_CONFIG, hidden_size=QWEN_TEXT_CONFIG["hidden_size"])
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)


def build_tiny_videoreward(out_dir: str | os.PathLike | None = None, seed: int = 0, lora: bool = True,
                           config: VideoRewardConfig | None = None) -> VideoRewardModel:
    """A tiny random VideoReward, deterministic from ``seed`` (global torch RNG untouched), in eval mode.

    Qwen2-VL: hidden 64, 2 layers, 4 heads (2 kv), vision depth 2 / width 32; a forward on 8 frames of 56x56 with
    VideoAlign's query (~850 tokens) takes a few ms on one thread. With ``lora`` the model has the official
    structure: a LoRA adapter (r 4, alpha 8, B non-zero as if trained) on the language model's linears, over a base.
    With ``out_dir`` it is also saved there in our layout (the base inside, ``DIR/base``). ``config`` defaults to
    ``VideoRewardConfig()``.
    """
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from vpt.models.videoreward import VideoRewardConfig, VideoRewardModel
    from vpt.models.videoreward_checkpoint import save_videoreward

    config = config if config is not None else VideoRewardConfig()
    tokenizer = build_qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        qwen = Qwen2VLForConditionalGeneration(tiny_qwen_config(tokenizer)).eval()
        model = VideoRewardModel(qwen, tokenizer, config)
        with torch.no_grad():
            model.head.weight.normal_(0.0, 1.0 / math.sqrt(model.head.weight.shape[1]))
        if lora:
            model.enable_lora(r=VIDEOREWARD_LORA["r"], alpha=VIDEOREWARD_LORA["alpha"], dropout=0.0)
            with torch.no_grad():
                for name, parameter in model.backbone.named_parameters():
                    if "lora_B" in name:
                        parameter.normal_(0.0, 0.05)
    model.eval()
    if out_dir is not None:
        save_videoreward(model, out_dir, save_base=True)
    return model


def write_zoo_videoreward(out_dir: str | os.PathLike, seed: int) -> dict[str, dict]:
    """The tiny zoo's VideoReward components: ``out_dir/videoreward`` (our layout, LoRA over ``base/`` inside) and
    ``out_dir/videoreward-official`` (VideoAlign's adapter layout) holding the same weights; ``zoo.json`` entries."""
    from vpt.models.videoalign import export_videoalign
    from vpt.models.videoreward_checkpoint import FORMAT_NAME, save_videoreward

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
        "lora": dict(VIDEOREWARD_LORA),
        "hidden_size": qwen.config.text_config.hidden_size,
        "tokenizer_vocab": len(model.tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "load": "vpt.models.videoreward_checkpoint.load_videoreward(path)",
    }
    return {
        "videoreward": {"path": "videoreward", "format": FORMAT_NAME, **common},
        "videoreward-official": {"path": "videoreward-official", "format": "videoalign", "layout": "adapter",
                                 **common},
    }


# ------------------------------------------------------------------------------------------------------ build


def library_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {}
    for name in ("torch", "diffusers", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    from vpt import __version__

    versions["vpt"] = __version__
    return versions


def _build_wan(out_dir: Path, seed: int, vae_steps: int, vae_batch: int, shift: float, log) -> dict:
    from diffusers import WanPipeline

    log("  tokenizer + text encoder")
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), component_seed(seed, "text_encoder"))

    log("  vae: untrained reference figures")
    vae = build_vae(component_seed(seed, "vae"))
    held_out = _vae_clips(32, component_seed(seed, "vae-heldout"))
    stats_clips = _vae_clips(64, component_seed(seed, "vae-stats"))
    untrained_mean, untrained_std = latent_statistics(vae, stats_clips)
    vae.register_to_config(latents_mean=untrained_mean, latents_std=untrained_std)
    untrained_recon = reconstruction_mse(vae, held_out)
    untrained_brightness = decoded_brightness(vae, seed=component_seed(seed, "spread"))

    log(f"  vae: training {vae_steps} steps x {vae_batch} toy clips (9x32x32)")
    started = time.perf_counter()
    training = train_vae(vae, vae_steps, seed, batch=vae_batch, log=log)
    training["seconds"] = round(time.perf_counter() - started, 2)
    latents_mean, latents_std = latent_statistics(vae, stats_clips)
    vae.register_to_config(latents_mean=latents_mean, latents_std=latents_std)
    recon = reconstruction_mse(vae, held_out)
    brightness = decoded_brightness(vae, seed=component_seed(seed, "spread"))

    log("  transformer + scheduler")
    transformer = build_transformer(VAE_CONFIG["z_dim"], component_seed(seed, "transformer"))
    scheduler = build_scheduler(shift)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                       scheduler=scheduler)
    from vpt.models.loading import quiet_loading

    with quiet_loading():
        pipe.save_pretrained(out_dir / "wan", safe_serialization=True)

    return {
        "path": "wan",
        "format": "diffusers",
        "class": "WanPipeline",
        "latent_channels": VAE_CONFIG["z_dim"],
        "scale_factor_spatial": vae.config.scale_factor_spatial,
        "scale_factor_temporal": vae.config.scale_factor_temporal,
        "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", "shift": float(shift)},
        "text_dim": TEXT_DIM,
        "tokenizer_vocab": len(tokenizer),
        "parameters": {
            "transformer": sum(p.numel() for p in transformer.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
        },
        "vae_training": {
            **training,
            "clips": dict(VAE_CLIP),
            "loss": "pixel MSE + 1e-4 * KL / pixels",
            "recon_mse": recon,
            "recon_mse_untrained": untrained_recon,
            "recon_pixel_range": "[-1, 1]",
            "recon_clips": len(held_out),
            "brightness_latents": SPREAD_LATENTS,
            "brightness_spread": float(brightness.std()),
            "brightness_mean": float(brightness.mean()),
            "brightness_spread_untrained": float(untrained_brightness.std()),
            "brightness_mean_untrained": float(untrained_brightness.mean()),
            "brightness_note": (
                "std over random normalised latents ~ N(0,1) of the decoded video's mean pixel value in [0,1], "
                "latents de-normalised with latents_mean/latents_std as WanPipeline does"
            ),
        },
    }


def build_tiny_zoo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    vae_steps: int = VAE_STEPS,
    vae_batch: int = VAE_BATCH,
    shift: float = DEFAULT_SHIFT,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the tiny zoo into ``out_dir`` (created; must not already hold a zoo) and return it.

    Deterministic from ``seed``: the same seed and versions give bit-identical weights on any machine.
    """
    log = _log_to(log)
    out_dir = Path(out_dir)
    if (out_dir / "zoo.json").exists() or (out_dir / "wan").exists():
        raise VptError(f"{out_dir}: already holds a zoo; remove it or choose another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"building the tiny zoo v{ZOO_VERSION} (seed {seed}) in {out_dir}")
    with _deterministic_torch(threads=1):
        wan = _build_wan(out_dir, seed, vae_steps, vae_batch, shift, log)
        log("  videoreward (tiny Qwen2-VL): our layout + VideoAlign's layout")
        videoreward = write_zoo_videoreward(out_dir, seed)
        log("  dinov2 (tiny, random): ViPO's patch features")
        dinov2 = _build_dinov2(out_dir, seed)
        log("  clip, siglip, aesthetic (tiny, random): the learned reward models")
        clip_family = _build_clip_family(out_dir, seed)
    index = {
        "zoo": "tiny",
        "zoo_version": ZOO_VERSION,
        "seed": seed,
        "versions": library_versions(),
        "components": {"wan": wan, **videoreward, "dinov2": dinov2, **clip_family},
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / "zoo.json").write_text(json.dumps(index, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return out_dir


def read_zoo_index(zoo_dir: str | os.PathLike) -> dict:
    """The ``zoo.json`` index of a zoo directory."""
    path = Path(zoo_dir) / "zoo.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VptError(f"{zoo_dir}: not a zoo directory (zoo.json missing); build one with `vpt zoo tiny DIR`") from None


def zoo_cache_root() -> Path:
    """``$VPT_CACHE_DIR/zoo`` or ``~/.cache/vpt/zoo``."""
    root = os.environ.get("VPT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "vpt") / "zoo"


def cached_tiny_zoo(seed: int = 0, cache_dir: str | os.PathLike | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """The tiny zoo for ``seed``, built once into ``<cache_dir>/tiny-v{ZOO_VERSION}-seed{seed}`` and reused.

    ``cache_dir`` defaults to :func:`zoo_cache_root`. The build goes to a temporary sibling renamed when complete,
    so a reader never sees half a zoo; concurrent builders on one machine wait for each other (file lock).
    """
    from vpt.io.atomic import atomic_directory

    root = Path(cache_dir) if cache_dir is not None else zoo_cache_root()
    target = root / f"tiny-v{ZOO_VERSION}-seed{seed}"
    if (target / "zoo.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".tiny-v{ZOO_VERSION}-seed{seed}.lock"):
        if (target / "zoo.json").is_file():
            return target
        with atomic_directory(target, replace=True) as temporary:
            build_tiny_zoo(temporary, seed=seed, log=log)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent builders each build; the atomic rename keeps the cache whole
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
