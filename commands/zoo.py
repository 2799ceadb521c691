"""``vpt zoo``: build the tiny offline models and the toy-world videos (thin adapters over ``vpt.models.zoo`` and
``vpt.toyworld``). Heavy imports happen inside the commands so ``vpt --help`` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Build tiny offline models and toy videos.", no_args_is_help=True)


def _say(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            typer.echo(message, err=True)

    return say


def _check_destination(out: Path) -> bool:
    """True when ``out`` exists as an empty directory (to be replaced); raise if it is in the way."""
    from vpt.errors import VptError

    if not out.exists():
        return False
    if not out.is_dir():
        raise VptError(f"{out}: exists and is not a directory; choose another destination")
    if any(out.iterdir()):
        raise VptError(f"{out}: exists and is not empty; remove it or choose another directory")
    return True


@app.command("tiny")
def tiny(
    out: Path = typer.Argument(..., help="Destination directory (must not exist, or be empty)."),
    seed: int = typer.Option(0, "--seed", help="Seed the whole zoo is built from."),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Build directly into OUT instead of copying the cached build for this seed."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary on stderr."),
) -> None:
    """Build the tiny zoo (a Wan text-to-video pipeline with a toy-trained VAE) into OUT, fully offline.

    The build for a seed is cached in $VPT_CACHE_DIR/zoo (default ~/.cache/vpt/zoo) and copied to OUT.

    The first build of a seed takes about a minute (the VAE is trained on toy clips).
    """
    import shutil

    from vpt.io.atomic import atomic_directory
    from vpt.models import zoo

    say = _say(quiet)
    replace = _check_destination(out)
    with atomic_directory(out, replace=replace) as temporary:
        if no_cache:
            zoo.build_tiny_zoo(temporary, seed=seed, log=say)
        else:
            source = zoo.cached_tiny_zoo(seed=seed, log=say)
            say(f"copying the cached zoo {source}")
            shutil.copytree(source, temporary, dirs_exist_ok=True)
    index = zoo.read_zoo_index(out)
    wan = index["components"]["wan"]
    figures = wan["vae_training"]
    say(f"tiny zoo v{index['zoo_version']} (seed {index['seed']}) -> {out}")
    say(f"  wan pipeline: {out / wan['path']}  (latent channels {wan['latent_channels']}, "
        f"shift {wan['scheduler']['shift']})")
    say(
        f"  vae: {figures['steps']} training steps, recon MSE {figures['recon_mse']:.4f} "
        f"(untrained {figures['recon_mse_untrained']:.4f}, pixels {figures['recon_pixel_range']}); "
        f"decoded brightness spread {figures['brightness_spread']:.4f} "
        f"(untrained {figures['brightness_spread_untrained']:.5f})"
    )


@app.command("toy-videos")
def toy_videos(
    out: Path = typer.Argument(..., help="Directory to create for clips/*.mp4 and videos.parquet (must not exist, "
                                         "or be empty)."),
    n: int = typer.Option(24, "--n", min=1, help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Seed of the toy world."),
    frames: int = typer.Option(17, "--frames", min=1, help="Frames per clip."),
    height: int = typer.Option(64, "--height", min=16, help="Frame height in pixels (even)."),
    width: int = typer.Option(64, "--width", min=16, help="Frame width in pixels (even)."),
    fps: float = typer.Option(8.0, "--fps", min=0.1, help="Frames per second of the mp4 files."),
) -> None:
    """Render toy-world clips (a moving shape with known attributes) as mp4 plus a `videos` manifest."""
    from vpt.errors import VptError
    from vpt.io.atomic import atomic_directory
    from vpt.toyworld import write_toy_videos

    if height % 2 or width % 2:
        raise VptError(f"--height and --width must be even for H.264 (got {height}x{width})")
    replace = _check_destination(out)
    with atomic_directory(out, replace=replace) as temporary:
        manifest = out / write_toy_videos(temporary, n=n, seed=seed, frames=frames, height=height, width=width,
                                          fps=fps).relative_to(temporary)
    typer.echo(f"wrote {n} toy clips ({frames} frames, {height}x{width}, {fps:g} fps) and the manifest {manifest}",
               err=True)
