"""Command line: `serve`, `generate`, `make-tiny`."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .config import Settings

if TYPE_CHECKING:
    from .api.schemas import StableAudioRequest

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Stable Audio text-to-audio service and tool.")


def _settings(**overrides) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    model: str | None = typer.Option(None, help="Model directory or hub id [env STABLE_AUDIO_MODEL]."),
    host: str | None = typer.Option(None, help="Bind address [env STABLE_AUDIO_HOST, default 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Port [env STABLE_AUDIO_PORT, default 2009]."),
    device: str | None = typer.Option(None, help="auto, cuda, mps or cpu."),
    dtype: str | None = typer.Option(None, help="auto, float32, float16 or bfloat16."),
    lora_dir: Path | None = typer.Option(
        None, help="Directory of LoRA adapters requests may name (Stable Audio 3) [env STABLE_AUDIO_LORA_DIR]."
    ),
    ray: bool = typer.Option(False, "--ray", help="Serve through Ray Serve: N model replicas (needs the ray extra)."),
    replicas: str | None = typer.Option(None, help="--ray: model replicas, N or MIN:MAX to autoscale (default 1)."),
    num_gpus: float | None = typer.Option(None, help="--ray: GPUs per replica, fractional ok (default 1 with GPUs)."),
    num_cpus: float | None = typer.Option(
        None,
        help="--ray: CPUs per replica (default: a local instance's CPUs shared among the replicas after the "
        "ingress's share; 1 on a cluster).",
    ),
    target_ongoing_requests: float | None = typer.Option(
        None, help="--ray with MIN:MAX: queued+running requests per replica to aim for (default: max batch size)."
    ),
) -> None:
    """Run the HTTP service (with --ray: over Ray Serve, on a local instance or the cluster in RAY_ADDRESS)."""
    ray_flags = {"replicas": replicas, "num_gpus": num_gpus, "num_cpus": num_cpus, "target": target_ongoing_requests}
    if not ray and any(v is not None for v in ray_flags.values()):
        _fail("--replicas, --num-gpus, --num-cpus and --target-ongoing-requests need --ray")
    from . import serving
    from .api import create_app
    from .models.loading import ModelLoadError, read_family, resolve_source

    settings = _settings(model=model, host=host, port=port, device=device, dtype=dtype, lora_dir=lora_dir)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # fail fast, before binding the port, when there are no weights at all
        read_family(resolve_source(settings.resolved_model()))
    except ModelLoadError as exc:
        _fail(str(exc))
    if ray:
        try:
            from .serving import ray as ray_serving
        except ImportError as exc:
            _fail(f"--ray needs Ray Serve: pip install 'stable-audio-service[ray]' ({exc})")
        try:
            options = ray_serving.RayOptions(
                **ray_serving.RayOptions.parse_replicas(replicas or "1"),
                num_gpus=num_gpus,
                num_cpus=num_cpus,  # None: fitted to the cluster once Ray is up
                target_ongoing_requests=target_ongoing_requests,
            )
        except ValueError as exc:
            _fail(str(exc))
        try:
            ray_serving.serve_forever(settings, options)  # SIGTERM: the application drains and stops, exit 0
        except ray_serving.DoesNotFit as exc:  # before anything was deployed: Serve would wait for it forever
            _fail(str(exc))
        return
    serving.run(create_app(settings), settings)  # graceful SIGTERM: answers in-flight work, flushes telemetry


def _progress_bar():
    """The denoising progress bar `generate` shows, in-process or against a server."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        transient=False,
    )


def _said_loudness(gain_db: float | None) -> None:
    """The gain a `--loudness` level applied, so the caller knows what was done to the file."""
    if gain_db is not None:
        typer.echo(f"loudness: gain {gain_db:+.2f} dB")


def _wrote(output: Path, duration: float, sample_rate: int, channels: int, fmt: str, seed: int | None) -> None:
    typer.echo(f"wrote {output} ({duration:.2f}s, {sample_rate} Hz, {channels} ch, {fmt}, seed {seed})")


def take_path(output: Path, index: int, seed: int, takes: int) -> Path:
    """Where take `index` (seed `seed`) of `takes` goes: `-o` itself for one take, else `-o` with an index and seed
    suffix (`rain.wav` -> `rain-0-seed7.wav`, `rain-1-seed8.wav`, ...), so takes never overwrite each other."""
    if takes == 1:
        return output
    return output.with_name(f"{output.stem}-{index}-seed{seed}{output.suffix}")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to generate."),
    output: Path = typer.Option(..., "-o", "--output", help="Output file; its extension picks the format."),
    model: str | None = typer.Option(None, help="Model directory or hub id [env STABLE_AUDIO_MODEL]."),
    duration: float | None = typer.Option(None, help="Seconds [model default: 10; open-1.0 allows 1-30]."),
    steps: int | None = typer.Option(None, help="Denoising steps [model default: open-1.0 100 (10-200), sa3 8]."),
    guidance: float | None = typer.Option(None, help="Guidance scale [model default: open-1.0 7, sa3 1 = off]."),
    seed: int | None = typer.Option(None, min=0, max=2**32 - 1, help="Seed (random when absent)."),
    negative_prompt: str | None = typer.Option(None, help="What to steer away from."),
    format: str | None = typer.Option(None, "--format", help="wav, flac, ogg or mp3 (default: from -o)."),
    device: str | None = typer.Option(None, help="auto, cuda, mps or cpu."),
    server: str | None = typer.Option(
        None, help="Generate on a running service (e.g. http://127.0.0.1:2009) instead of loading a model here."
    ),
    token: str | None = typer.Option(
        None, envvar="STABLE_AUDIO_API_KEY", help="Bearer token for --server [env STABLE_AUDIO_API_KEY]."
    ),
    lora: list[str] | None = typer.Option(
        None,
        "--lora",
        help="LoRA adapter NAME[:STRENGTH[:CONDITIONER_STRENGTH]] (strength 1 by default; the conditioner's "
        "defaults to the strength); repeat to stack, in order.",
    ),
    lora_dir: Path | None = typer.Option(
        None, help="Directory of LoRA adapters (Stable Audio 3) [env STABLE_AUDIO_LORA_DIR]."
    ),
    max_wait: float | None = typer.Option(
        None,
        "--max-wait",
        help="With --server: seconds to wait for the result at most; the service refuses at once what it "
        "estimates it cannot finish by then.",
    ),
    num_outputs: int | None = typer.Option(
        None,
        "-n",
        "--num-outputs",
        help="Takes from seeds seed, seed+1, ... in one batch (1-8); each goes to -o with an -INDEX-seedSEED suffix.",
    ),
    window: float | None = typer.Option(
        None, "--window", help="Long-form: seconds per continuation window [the model's longest clip]."
    ),
    overlap: float | None = typer.Option(
        None, "--overlap", help="Long-form: seconds each window continues and crossfades [min(10, window/4)]."
    ),
    loudness: str | None = typer.Option(
        None,
        "--loudness",
        help="none (as generated), peak (-1 dBFS peak) or a target in LUFS, e.g. -14 (true peak kept under -1 dBTP).",
    ),
) -> None:
    """Generate one clip to a file, with a progress bar: here, or on a running service with --server."""
    from pydantic import ValidationError

    from .api.schemas import StableAudioRequest
    from .audio import format_from_path

    fmt = format or format_from_path(str(output)) or "wav"
    try:
        body = StableAudioRequest(
            prompt=prompt,
            duration=duration,
            guidance_scale=guidance,
            num_inference_steps=steps,
            seed=seed,
            negative_prompt=negative_prompt,
            format=fmt,
            loras=_lora_specs(lora or []) or None,
            max_wait_s=max_wait,
            num_outputs=num_outputs,
            window_s=window,
            overlap_s=overlap,
            loudness=loudness,
        )
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    if server is not None:
        if model is not None or device is not None or lora_dir is not None:
            _fail("--model, --device and --lora-dir choose a model to load here; with --server the service's is used")
        _generate_remote(body, output, server, token)
    else:
        _generate_local(body, output, model, device, lora_dir)


def _lora_specs(specs: list[str]) -> list[dict]:
    """`NAME[:STRENGTH[:CONDITIONER_STRENGTH]]` -> request items (names never contain ':')."""
    out = []
    for spec in specs:
        name, *numbers = spec.split(":")
        if len(numbers) > 2:
            _fail(f"--lora {spec}: NAME[:STRENGTH[:CONDITIONER_STRENGTH]] has at most two numbers")
        item: dict = {"name": name}
        for key, value in zip(("strength", "conditioner_strength"), numbers, strict=False):
            try:
                item[key] = float(value)
            except ValueError:
                _fail(f"--lora {spec}: the {key.replace('_', ' ')} after ':' must be a number")
        out.append(item)
    return out


def _generate_remote(body: StableAudioRequest, output: Path, server: str, token: str | None) -> None:
    """`generate --server`: the same request through the Python client, progress from the job's events."""
    import httpx

    from .client import JobEvent, StableAudioClient, StableAudioError

    params = body.model_dump(exclude_none=True, exclude={"prompt"})
    bar = _progress_bar()
    task = None
    said: tuple[int | None, float | None] | None = None  # the last (position, eta) told

    def progress(event: JobEvent) -> None:  # the bar appears with the first step, as in-process
        nonlocal task, said
        if event.type == "queued" and task is None and _worth_saying(said, event.position, event.eta_s):
            typer.echo(_queued_line(event.position, event.eta_s), err=True)
            said = (event.position, event.eta_s)
        if event.type == "step":
            if task is None:
                bar.start()
                task = bar.add_task("denoising", total=event.total)
            bar.update(task, completed=event.step, total=event.total)

    try:
        with StableAudioClient(server, token=token) as client:
            result = client.generate(body.prompt, on_progress=progress, **params)
    except (StableAudioError, httpx.HTTPError) as exc:
        error = exc
    else:
        error = None
    finally:
        if task is not None:
            bar.stop()
    if isinstance(error, StableAudioError):
        _fail(error.message)
    elif error is not None:
        _fail(f"cannot reach {server}: {error}")
    output.parent.mkdir(parents=True, exist_ok=True)
    for i, take in enumerate(result.outputs):
        path = take.save(take_path(output, i, take.seed, len(result.outputs)))
        _wrote(path, take.duration, take.sample_rate, take.channels, take.format, take.seed)
        _said_loudness(take.loudness_gain_db)


def _worth_saying(said: tuple[int | None, float | None] | None, position: int | None, eta_s: float | None) -> bool:
    """A queued event is printed when it is the first, the place changed, or the estimate moved by more than a
    quarter since it was last told (a 40 s wait is told at about 40, 30, 22, 16... s): not once a second, as the
    service refreshes it."""
    if said is None or said[0] != position or (said[1] is None) != (eta_s is None):
        return True
    return said[1] is not None and eta_s is not None and abs(eta_s - said[1]) > 0.25 * max(said[1], 4.0)


def _queued_line(position: int | None, eta_s: float | None) -> str:
    """`queued, about 12 s` (with the place when the service gave one): what a waiting caller wants to know."""
    where = f" (position {position})" if position else ""
    if eta_s is None:
        return f"queued{where}"
    return f"queued{where}, about {max(1, round(eta_s))} s"


def _generate_local(
    body: StableAudioRequest, output: Path, model: str | None, device: str | None, lora_dir: Path | None = None
) -> None:
    """`generate` without --server: load the model here and run the request through an engine, over the same
    `EngineClient` protocol the HTTP routes use."""
    from .engine import Engine
    from .engine.local import LocalEngineClient
    from .models.loading import ModelLoadError, load_model

    settings = _settings(model=model, device=device, lora_dir=lora_dir)
    try:
        loaded, _info = load_model(settings)
    except ModelLoadError as exc:
        _fail(str(exc))
    from .service import RequestError, resolve

    try:  # the same request path as HTTP (as POST /jobs: long-form too): the model's defaults, limits, capabilities
        resolved = resolve(body, loaded, settings, longform=True)
    except RequestError as exc:
        _fail(f"{'.'.join(map(str, exc.loc))}: {exc.message}")
    client = LocalEngineClient(Engine(loaded, batch_wait_ms=0))
    client.start()
    params = resolved.params

    async def run() -> None:
        job = await client.submit(params, format=resolved.format, keep=False)  # Ctrl-C closes the stream: cancel
        with _progress_bar() as bar:
            task = bar.add_task("denoising", total=params.num_inference_steps)
            async for event in job.events():
                if event.type == "step":
                    bar.update(task, completed=event.data["step"], total=event.data["total"])
        audio = await job.audio()
        info = audio.info
        if info.result is None or audio.data is None:
            _fail(info.error or info.status.value)
        output.parent.mkdir(parents=True, exist_ok=True)
        res = info.result
        for i in range(res.takes):
            seed = (info.seed or 0) + i
            path = take_path(output, i, seed, res.takes)
            path.write_bytes(audio.take(i) or b"")
            _wrote(path, res.duration, res.sample_rate, res.channels, resolved.format, seed)
            _said_loudness(res.loudness[i].gain_db if len(res.loudness) > i else None)

    try:
        asyncio.run(run())
    finally:
        client.shutdown(grace_s=0)


@app.command("make-tiny")
def make_tiny_cmd(
    directory: Path = typer.Argument(..., help="Where to write the model."),
    family: str = typer.Option("open-1.0", help="open-1.0 (diffusers layout) or sa3 (Stability's official format)."),
    structure: str = typer.Option("small", help="sa3 only: small (SAME-S, chunked) or medium (SAME-L, band)."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Write a tiny random-weight model (noise only) in the real on-disk format of its family, offline."""
    from .models.tiny import make_tiny

    try:
        out = make_tiny(directory, family=family, seed=seed, structure=structure)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote a tiny random-weight {family} model to {out} (it makes noise, not music)")


def main() -> None:
    app(prog_name="stable-audio-service")


if __name__ == "__main__":
    sys.exit(main())
