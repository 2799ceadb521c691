"""Our visible sampling loop over the Wan pieces reproduces diffusers' WanPipeline on the tiny zoo at noise level 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpt.algo.flow_sde import sample_flow
from vpt.models.loading import load_wan_pipeline
from vpt.models.wan import (
    WanVelocity, decode_latents, encode_prompts, initial_noise, latent_shape, schedule_sigmas, to_uint8,
)

SIZE = {"frames": 9, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def pipe(tiny_zoo):
    return load_wan_pipeline(tiny_zoo)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_noise_level_zero_reproduces_wan_pipeline(pipe, guidance):
    prompt, steps, seed = "a red ball bouncing on a blue floor", 4, 11
    with torch.no_grad():
        expected_latents = pipe(prompt=prompt, negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
                                num_frames=SIZE["frames"], height=SIZE["height"], width=SIZE["width"],
                                generator=torch.Generator().manual_seed(seed), output_type="latent").frames
        expected_video = pipe(prompt=prompt, negative_prompt="", num_inference_steps=steps, guidance_scale=guidance,
                              num_frames=SIZE["frames"], height=SIZE["height"], width=SIZE["width"],
                              generator=torch.Generator().manual_seed(seed), output_type="np").frames

        embeds, negative = encode_prompts(pipe, [prompt], guidance=guidance)
        noise = initial_noise(latent_shape(pipe, **SIZE), torch.Generator().manual_seed(seed))
        sigmas = schedule_sigmas(dict(pipe.scheduler.config), steps)
        out = sample_flow(WanVelocity(pipe.transformer, embeds, negative, guidance), noise, sigmas)
        video = decode_latents(pipe, out.latents)
    torch.testing.assert_close(out.latents, expected_latents, rtol=0, atol=1e-5)
    np.testing.assert_allclose(video, expected_video, rtol=0, atol=1e-5)
    assert video.shape == (1, 9, 32, 32, 3)
    frames = to_uint8(video)
    assert frames.dtype == np.uint8 and frames.shape == (1, 9, 32, 32, 3)


def test_shapes_the_pipeline_would_round_are_refused(pipe):
    assert latent_shape(pipe, 9, 32, 48) == (16, 3, 4, 6)
    with pytest.raises(ValueError, match=r"frames must be 1 \+ a multiple of 4 \(e.g. 5, 17\), got 8"):
        latent_shape(pipe, 8, 32, 32)
    with pytest.raises(ValueError, match="height must be a positive multiple of 16, got 40"):
        latent_shape(pipe, 9, 40, 32)


def test_schedule_follows_the_scheduler_config_and_a_shift_override():
    sigmas = schedule_sigmas({"shift": 3.0, "num_train_timesteps": 1000}, 4)
    assert sigmas.dtype == torch.float32 and sigmas[0] == 1 and sigmas[-1] == 0 and len(sigmas) == 5
    unipc = schedule_sigmas({"flow_shift": 3.0}, 4)  # the Wan 2.1 releases' UniPC config names it flow_shift
    assert torch.equal(sigmas, unipc)
    plain = schedule_sigmas({"shift": 3.0}, 4, shift=1.0)
    torch.testing.assert_close(plain[:-1], torch.linspace(1, 0.001, 4))  # unshifted: 1 .. 1/1000 evenly


def test_encode_videos_inverts_decode_latents(pipe):
    from vpt.models.wan import encode_videos
    from vpt.toyworld import toy_clips

    clips = np.stack([clip for _, clip in toy_clips(2, seed=5, **SIZE)])
    latents = encode_videos(pipe, clips)
    assert latents.dtype == torch.float32 and latents.device.type == "cpu"
    assert latents.shape == (2, *latent_shape(pipe, **SIZE))
    assert torch.equal(encode_videos(pipe, clips), latents)  # the posterior mean: no sampling
    torch.testing.assert_close(encode_videos(pipe, clips[1:]), latents[1:], rtol=0, atol=1e-5)  # batching: rounding
    # decoding undoes the normalisation exactly: the same pixels as the VAE's own round trip
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess_video(clips / 255.0, height=SIZE["height"], width=SIZE["width"])
        raw = pipe.vae.decode(pipe.vae.encode(pixels.float()).latent_dist.mode(), return_dict=False)[0]
    own_round_trip = pipe.video_processor.postprocess_video(raw, output_type="np")
    np.testing.assert_allclose(decode_latents(pipe, latents), own_round_trip, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"frames must be 1 \+ a multiple of 4 \(e.g. 5, 17\), got 8"):
        encode_videos(pipe, clips[:, :8])
