"""``vltool serve``: an OpenAI-compatible API and a web chat page for a model (see docs/serve.md)."""

import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from vltool.cli.model_options import ModelChoice, ModelOptions, with_model_options
from vltool.errors import ConfigError

if TYPE_CHECKING:  # the model stack loads only when a command runs, so `vltool --help` stays fast
    from vltool.infer.pipeline import Pipeline
    from vltool.serve.app import ServeSettings


@with_model_options
def serve(
    model: str = typer.Argument(
        ..., help="A model directory from `vltool convert pth_to_hf`, or an LLM path used with --llava."
    ),
    model_options: ModelOptions = ModelOptions(),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 exposes the server."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="The name clients give as `model` (default: the model folder's name)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="VLTOOL_API_KEY", help="Require `Authorization: Bearer KEY` (env VLTOOL_API_KEY)."
    ),
    allow_origin: list[str] = typer.Option(
        [], "--allow-origin", help="Let web pages from this origin call the API (CORS); repeat. Default: none."
    ),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests that may wait; more get 503 + Retry-After."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", help="Seconds per request before 504."),
    max_batch_size: int = typer.Option(
        1, "--max-batch-size", help="Answer up to N queued requests with equal options together (not bit-exact)."
    ),
    max_images: int = typer.Option(8, "--max-images", help="Images one request may carry."),
    max_request_mb: float = typer.Option(20.0, "--max-request-mb", help="Largest request body, and image, in MB."),
    image_fetch_timeout: float = typer.Option(10.0, "--image-fetch-timeout", help="Seconds to download one image."),
    allowed_media_domains: list[str] = typer.Option(
        [],
        "--allowed-media-domains",
        help="Fetch images only from these hosts (repeat or comma-separate); they may be private or loopback.",
    ),
    allowed_local_media_path: Path | None = typer.Option(
        None, "--allowed-local-media-path", help="Folder whose files may be given as file:// image URLs."
    ),
    system: str | None = typer.Option(None, "--system", help="System prompt of requests without one."),
    temperature: float = typer.Option(0.0, "--temperature", help="Default: 0 decodes greedily; above 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", help="Default nucleus sampling mass."),
    top_k: int = typer.Option(0, "--top-k", help="Default: sample among the k likeliest tokens (0 = all)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Default repetition penalty."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest answer when a request sets none."),
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions) with a chat page at /."""
    from vltool.infer.pipeline import GenerationOptions
    from vltool.serve.media import MediaPolicy

    defaults = GenerationOptions(max_new_tokens, temperature, top_p, top_k, repetition_penalty)
    limits = {"--port": (port, 1, 65535), "--max-queue": (max_queue, 1, None), "--max-images": (max_images, 0, None)}
    limits |= {"--max-batch-size": (max_batch_size, 1, None), "--request-timeout": (request_timeout, 0.001, None)}
    limits |= {
        "--max-request-mb": (max_request_mb, 0.001, None),
        "--image-fetch-timeout": (image_fetch_timeout, 0.001, None),
    }
    for flag, (value, low, high) in limits.items():
        if value < low or (high is not None and value > high):
            raise ConfigError(f"{flag} {value}: must be at least {low}" + (f" and at most {high}." if high else "."))
    if allowed_local_media_path is not None and not allowed_local_media_path.is_dir():
        raise ConfigError(f"--allowed-local-media-path {allowed_local_media_path}: not a folder; give an existing one.")
    choice = ModelChoice(model, model_options)
    choice.check()
    max_bytes = int(max_request_mb * 2**20)
    media = MediaPolicy(
        max_image_bytes=max_bytes,
        fetch_timeout=image_fetch_timeout,
        allowed_domains=tuple(d.strip() for entry in allowed_media_domains for d in entry.split(",") if d.strip()),
        allowed_local_path=allowed_local_media_path.resolve() if allowed_local_media_path else None,
    )
    from vltool.serve.app import ServeSettings

    settings = ServeSettings(
        model_name=served_model_name or choice.name,
        api_key=api_key or None,
        allow_origins=tuple(allow_origin),
        max_queue=max_queue,
        request_timeout=request_timeout,
        max_images=max_images,
        max_request_bytes=max_bytes,
        media=media,
        defaults=defaults,
        system=system,
        max_batch_size=max_batch_size,
    )
    console = Console(stderr=True)
    if not _is_loopback(host) and settings.api_key is None:
        console.print(
            f"[yellow]warning:[/] --host {host} without --api-key: anyone who can reach it may use the model."
        )
    with console.status("loading the model..."):
        pipeline = choice.load()
    _run(pipeline, settings, host, port)


def _run(pipeline: "Pipeline", settings: "ServeSettings", host: str, port: int) -> None:
    """Start the engine thread and uvicorn; both end on Ctrl-C or SIGTERM."""
    import uvicorn

    from vltool.serve.app import create_app
    from vltool.serve.engine import Engine

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    serve_logger = logging.getLogger("vltool.serve")
    serve_logger.addHandler(handler)
    serve_logger.setLevel(logging.INFO)
    serve_logger.propagate = False
    engine = Engine(pipeline, settings.max_queue, settings.max_batch_size)
    serve_logger.info("serving the model as %r on http://%s:%d", settings.model_name, host, port)
    uvicorn.run(create_app(engine, settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
