"""Loading the model a command talks to: a converted model directory, or XTuner-style parts.

``chat``, ``mmbench`` and ``eval`` take the same seven model-loading options, declared once in
:class:`ModelOptions`; :func:`with_model_options` gives a command all seven and hands it the
:class:`ModelOptions` they make. Every command loads through :meth:`ModelChoice.load`.
"""

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from vltool.errors import ConfigError

if TYPE_CHECKING:  # the model stack loads only when a command runs, so `vltool --help` stays fast
    from vltool.eval.api_client import ServedModel
    from vltool.infer.pipeline import Pipeline

DTYPES = ("auto", "bfloat16", "float16", "float32")


def _option(default: Any, help_text: str) -> Any:
    """A :class:`ModelOptions` field: its default and its ``--help`` line."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class ModelOptions:
    """How to load the model: the options ``chat``, ``mmbench`` and ``eval`` share.

    Each field is the option ``--field-name`` (underscores as dashes); its metadata holds the help.

    Attributes:
        prompt_template: the template name; None keeps the model's own.
        visual_encoder: XTuner-style parts: the vision encoder (default: the one in ``llava``).
        llava: XTuner-style parts: the folder with ``projector/`` and any adapters.
        visual_select_layer: with ``llava``: the encoder layer whose features are used.
        bits: 4 or 8 to quantise the LLM; None keeps its weights.
        torch_dtype: one of :data:`DTYPES`.
        device: where to run; None picks cuda when there is one (under torchrun: this process's GPU).
    """

    prompt_template: str | None = _option(None, "Template name (default: the one saved with the model).")
    visual_encoder: str | None = _option(None, "XTuner-style parts: the vision encoder path (MODEL is then the LLM).")
    llava: str | None = _option(
        None, "XTuner-style parts: folder with projector/ and any llm_adapter/, visual_encoder*/."
    )
    visual_select_layer: int = _option(-2, "With --llava: the encoder layer.")
    bits: int | None = _option(None, "Load the LLM quantised to 4 or 8 bits (bitsandbytes).")
    torch_dtype: str = _option("auto", "auto, bfloat16, float16 or float32.")
    device: str | None = _option(None, "cpu, cuda, cuda:1 ... (default: cuda if present).")


PRECISION_OPTIONS = ("bits", "torch_dtype", "device")
"""The options that say how the weights load, as opposed to which parts and template."""


def with_model_options(command: Callable[..., None] | None = None, *, precision_before: str | None = None) -> Any:
    """Give a typer command the :class:`ModelOptions` options, in place of its ``model_options`` parameter.

    The command declares ``model_options: ModelOptions`` where the options go in its ``--help``
    and receives them as one :class:`ModelOptions`. With ``precision_before``, the
    :data:`PRECISION_OPTIONS` go before that parameter instead (``chat`` lists them after its
    sampling options).
    """
    if command is None:
        return functools.partial(with_model_options, precision_before=precision_before)
    signature = inspect.signature(command)
    options = {
        option.name: inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(option.default, f"--{option.name.replace('_', '-')}", help=option.metadata["help"]),
            annotation=option.type,
        )
        for option in dataclasses.fields(ModelOptions)
    }
    later = [options.pop(name) for name in PRECISION_OPTIONS] if precision_before else []
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name == precision_before:
            parameters += later
        if parameter.name == "model_options":
            parameters += options.values()
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    if len(parameters) != len(signature.parameters) - 1 + len(dataclasses.fields(ModelOptions)):
        raise TypeError(f"{command.__name__} needs a model_options parameter (and {precision_before}, if given)")

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        chosen = {name: values.pop(name) for name in [f.name for f in dataclasses.fields(ModelOptions)]}
        return command(**values, model_options=ModelOptions(**chosen))

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": signature.return_annotation}
    return wrapper


@dataclass(frozen=True)
class ModelChoice:
    """The model of a command and how to load it.

    Attributes:
        model: a converted model directory, or the LLM when ``options.llava`` is given.
        options: the model-loading options.
    """

    model: str
    options: ModelOptions = ModelOptions()

    @property
    def name(self) -> str:
        """A short name for result files: the model folder's (or with parts, the llava folder's) name."""
        return Path(self.options.llava or self.model).resolve().name or "model"

    def identity(self) -> dict[str, str | int | None]:
        """What the answers depend on: paths resolved, plus template and quantisation (for prediction caches)."""
        options = self.options
        resolved = {
            name: str(Path(value).resolve()) if value and Path(value).exists() else value
            for name, value in (
                ("model", self.model),
                ("llava", options.llava),
                ("visual_encoder", options.visual_encoder),
            )
        }
        return {
            **resolved,
            "template": options.prompt_template,
            "bits": options.bits,
            "torch_dtype": options.torch_dtype,
        }

    def check(self) -> None:
        """Refuse impossible combinations before anything loads."""
        options = self.options
        if options.torch_dtype not in DTYPES:
            raise ConfigError(f"unknown --torch-dtype {options.torch_dtype}; use one of {', '.join(DTYPES)}.")
        if options.llava is None and options.visual_encoder is not None:
            raise ConfigError("--visual-encoder needs --llava DIR (the folder with projector/) as in XTuner.")
        resolve_device(options.device)

    def load(self) -> "Pipeline":
        """Load the model for inference.

        Raises:
            ConfigError: bad options; DatasetError/ConfigError from the loaders for missing or bad folders.
        """
        self.check()
        # bitsandbytes warns at import, on every CPU without its optional `kernels` package, about a
        # faster 4-bit kernel it could not fetch; answers are the same without it
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        from transformers.utils import logging as transformers_logging

        from vltool.infer.load import load_parts_pipeline, load_pipeline

        transformers_logging.disable_progress_bar()
        options = self.options
        device = resolve_device(options.device)
        if options.llava is not None:
            return load_parts_pipeline(
                self.model,
                options.llava,
                options.visual_encoder,
                options.torch_dtype,
                device,
                options.prompt_template,
                options.bits,
                feature_layer=options.visual_select_layer,
            )
        return load_pipeline(self.model, options.torch_dtype, device, options.prompt_template, bits=options.bits)


def resolve_device(name: str | None) -> str:
    """The device to run on, checked before anything loads.

    Without ``--device``: cuda when there is one (under torchrun, the GPU of this process's local
    rank), else cpu.
    """
    import torch

    if name is None:
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name}; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {name}: no such CUDA GPU here ({torch.cuda.device_count()} visible); use cpu.")
    return name


def benchmark_model(model: str | None, batch_size: int, options: ModelOptions) -> ModelChoice:
    """The checked model of an ``mmbench`` or ``eval`` run, before any process starts or anything loads.

    Args:
        model: the MODEL argument (None when the user gave none).
        batch_size: ``--batch-size``.
        options: the model-loading options.

    Raises:
        ConfigError: no model, a batch size below 1, or bad model options.
    """
    if model is None:
        raise ConfigError(
            "missing MODEL: give a model directory, --api-base URL of a server, or --predictions FILE to score "
            "saved predictions."
        )
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1.")
    choice = ModelChoice(model, options)
    choice.check()
    return choice


def refuse_model_with_predictions(model: str | None) -> None:
    """``--predictions`` scores saved answers: a MODEL beside it is a mistake worth saying."""
    if model is not None:
        raise ConfigError("give MODEL to answer the questions or --predictions FILE to score saved ones, not both.")


API_KEY_ENV = "VLTOOL_API_KEY"
"""Where ``--api-key`` comes from when not given (the variable ``vltool serve`` reads too). Never
``OPENAI_API_KEY``: that key would go to whatever server ``--api-base`` names."""

# the options of ``mmbench`` and ``eval`` that answer through a server instead of a local model
API_BASE_OPTION: Any = typer.Option(
    None, "--api-base", help="Answer through this OpenAI-compatible server (http://host:8000/v1) instead of MODEL."
)
API_KEY_OPTION: Any = typer.Option(
    None, "--api-key", envvar=API_KEY_ENV, show_envvar=True, help="With --api-base: the server's Bearer token."
)
API_MODEL_OPTION: Any = typer.Option(
    None, "--model", help="With --api-base: the served model's id (default: the first GET /v1/models lists)."
)
API_CONCURRENCY_OPTION: Any = typer.Option(
    8, "--api-concurrency", help="Requests in flight at once to each server (--api-base, --judge-api-base)."
)


def served_model(
    api_base: str,
    api_key: str | None,
    api_model: str | None,
    concurrency: int,
    model: str | None,
    batch_size: int | None,
    options: ModelOptions,
) -> "ServedModel":
    """The checked server of an ``mmbench``/``eval`` run through an API, its model named or asked for.

    Raises:
        ConfigError: local-model arguments beside ``--api-base`` (:func:`refuse_local_model_options`), a
            bad URL or concurrency, or a server that cannot be reached or lists no model.
    """
    from vltool.eval.api_client import ApiEndpoint, ServedModel

    refuse_local_model_options(model, batch_size, options)
    return ServedModel.connect(ApiEndpoint(api_base, api_key, concurrency), api_model)


def refuse_local_model_options(model: str | None, batch_size: int | None, options: ModelOptions) -> None:
    """``--api-base`` asks a server that has loaded its own model: local-model arguments beside it are mistakes.

    Raises:
        ConfigError: a MODEL argument, ``--batch-size`` or a model-loading option given with ``--api-base``.
    """
    if model is not None:
        raise ConfigError("give MODEL (a local model) or --api-base URL (a server), not both.")
    if batch_size is not None:
        raise ConfigError(
            "--batch-size is for a local model; with --api-base, --api-concurrency sets the requests in flight."
        )
    given = [
        f"--{f.name.replace('_', '-')}"
        for f in dataclasses.fields(ModelOptions)
        if getattr(options, f.name) != f.default
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)}: model-loading options, but --api-base asks a server that loaded its own model."
        )
    if "NPROC_PER_NODE" in os.environ or "LOCAL_RANK" in os.environ:
        raise ConfigError(
            "--api-base sends concurrent requests from one process; unset NPROC_PER_NODE (or run without torchrun) "
            "and raise --api-concurrency instead."
        )
