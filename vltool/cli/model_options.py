"""Loading the model a command talks to: a converted model directory, or XTuner-style parts.

``chat``, ``mmbench`` and ``eval`` take the same model arguments and load through here.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vltool.errors import ConfigError

if TYPE_CHECKING:  # the model stack loads only when a command runs, so `vltool --help` stays fast
    from vltool.infer.pipeline import Pipeline

DTYPES = ("auto", "bfloat16", "float16", "float32")

PROMPT_TEMPLATE = typer.Option(None, "--prompt-template", help="Template name (default: the one saved with the model).")
VISUAL_ENCODER = typer.Option(
    None, "--visual-encoder", help="XTuner-style parts: the vision encoder path (MODEL is then the LLM)."
)
LLAVA = typer.Option(
    None, "--llava", help="XTuner-style parts: folder with projector/ and any llm_adapter/, visual_encoder*/."
)
VISUAL_SELECT_LAYER = typer.Option(-2, "--visual-select-layer", help="With --llava: the encoder layer.")
BITS = typer.Option(None, "--bits", help="Load the LLM quantised to 4 or 8 bits (bitsandbytes).")
TORCH_DTYPE = typer.Option("auto", "--torch-dtype", help="auto, bfloat16, float16 or float32.")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if present).")


@dataclass(frozen=True)
class ModelChoice:
    """The model arguments of a command.

    Attributes:
        model: a converted model directory, or the LLM when ``llava`` is given.
        visual_encoder: XTuner-style parts: the vision encoder (default: the one in ``llava``).
        llava: XTuner-style parts: the folder with ``projector/`` and any adapters.
        visual_select_layer: with ``llava``: the encoder layer whose features are used.
        prompt_template: the template name; None keeps the model's own.
        bits: 4 or 8 to quantise the LLM; None keeps its weights.
        torch_dtype: one of :data:`DTYPES`.
        device: where to run; None picks cuda when there is one (under torchrun: this process's GPU).
    """

    model: str
    visual_encoder: str | None = None
    llava: str | None = None
    visual_select_layer: int = -2
    prompt_template: str | None = None
    bits: int | None = None
    torch_dtype: str = "auto"
    device: str | None = None

    @property
    def name(self) -> str:
        """A short name for result files: the model folder's (or with parts, the llava folder's) name."""
        return Path(self.llava or self.model).resolve().name or "model"

    def identity(self) -> dict[str, str | int | None]:
        """What the answers depend on: paths resolved, plus template and quantisation (for prediction caches)."""
        resolved = {
            name: str(Path(value).resolve()) if value and Path(value).exists() else value
            for name, value in (("model", self.model), ("llava", self.llava), ("visual_encoder", self.visual_encoder))
        }
        return {**resolved, "template": self.prompt_template, "bits": self.bits, "torch_dtype": self.torch_dtype}

    def check(self) -> None:
        """Refuse impossible combinations before anything loads."""
        if self.torch_dtype not in DTYPES:
            raise ConfigError(f"unknown --torch-dtype {self.torch_dtype}; use one of {', '.join(DTYPES)}.")
        if self.llava is None and self.visual_encoder is not None:
            raise ConfigError("--visual-encoder needs --llava DIR (the folder with projector/) as in XTuner.")
        resolve_device(self.device)

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
        device = resolve_device(self.device)
        if self.llava is not None:
            return load_parts_pipeline(
                self.model,
                self.llava,
                self.visual_encoder,
                self.torch_dtype,
                device,
                self.prompt_template,
                self.bits,
                feature_layer=self.visual_select_layer,
            )
        return load_pipeline(self.model, self.torch_dtype, device, self.prompt_template, bits=self.bits)


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


def benchmark_model(model: str | None, batch_size: int, **options: str | int | None) -> ModelChoice:
    """The checked model of an ``mmbench`` or ``eval`` run, before any process starts or anything loads.

    Args:
        model: the MODEL argument (None when the user gave none).
        batch_size: ``--batch-size``.
        **options: the other :class:`ModelChoice` fields.

    Raises:
        ConfigError: no model, a batch size below 1, or bad model options.
    """
    if model is None:
        raise ConfigError("missing MODEL: give a model directory, or --predictions FILE to score saved predictions.")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1.")
    choice = ModelChoice(model, **options)  # type: ignore[arg-type]
    choice.check()
    return choice


def refuse_model_with_predictions(model: str | None) -> None:
    """``--predictions`` scores saved answers: a MODEL beside it is a mistake worth saying."""
    if model is not None:
        raise ConfigError("give MODEL to answer the questions or --predictions FILE to score saved ones, not both.")
