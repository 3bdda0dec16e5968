"""Shared fixtures: the real Qwen2 tokenizer, tiny random-weight model parts, and short training runs."""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

from tests.convert.trained_runs import saved_bases, train, variant_config, write_data
from vltool.model.projectors import MLPProjector
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel

ASSETS = Path(__file__).parent / "assets"
IMAGE_SIZE = 32


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory):
    """Prepared datasets go to a folder of this test session (subprocesses inherit it), not ~/.cache."""
    folder = tmp_path_factory.mktemp("vltool_cache")
    os.environ["VLTOOL_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Iterator[Callable[[str], Path]]:
    """``tmp_path_factory.mktemp`` for module-scoped fixtures: the folders go when the module's tests end.

    pytest keeps such folders until the session ends; the models and checkpoints they hold add up
    to gigabytes over a full run. They stay, for a look, when one of the module's tests failed.
    """
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tokenizer():
    tok = load_qwen2_tokenizer()
    add_image_token(tok)
    return tok


# one shape for every tiny vision tower (CLIP or SigLIP) and every tiny Qwen2 in the tests
TINY_VISION = dict(patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_QWEN2 = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def tiny_clip(image_size: int = IMAGE_SIZE) -> CLIPVisionModel:
    return CLIPVisionModel(CLIPVisionConfig(image_size=image_size, **TINY_VISION))


def tiny_qwen2_config(**overrides) -> Qwen2Config:
    return Qwen2Config(**{**TINY_QWEN2, **overrides})


def tiny_qwen2(**overrides) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(tiny_qwen2_config(**overrides))


def tiny_image_processor(image_size: int = IMAGE_SIZE) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


@pytest.fixture
def tiny_vlm(tokenizer) -> VisionLanguageModel:
    torch.manual_seed(0)
    encoder = VisionEncoder(tiny_clip(), feature_layer=-2, select_strategy="default")
    llm = tiny_qwen2()
    projector = MLPProjector(encoder.hidden_size, llm.config.hidden_size, depth=2)
    model = VisionLanguageModel(
        encoder,
        projector,
        llm,
        image_token_id=add_image_token(tokenizer),
        freeze_vision_encoder=False,
        freeze_llm=False,
    )
    return model.eval()


# ---- short training runs shared by the conversion tests: each kind trains once per session, on first use


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="session")
def bases(tmp_path_factory):
    return saved_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="session")
def runs(data, bases, tmp_path_factory):
    """Train each kind of run once per session, on first use."""
    done = {}

    def get(kind):
        if kind not in done:
            done[kind] = train(variant_config(kind, data, bases), tmp_path_factory.mktemp(kind))
        return done[kind]

    return get


@pytest.fixture(scope="session")
def image_path(data):
    """A non-square picture (padding to square matters): red left, blue right."""
    image = Image.new("RGB", (80, 56), "red")
    image.paste(Image.new("RGB", (40, 56), "blue"), (40, 0))
    path = data.parent / "red_blue.png"
    image.save(path)
    return path


@pytest.fixture(scope="session")
def image(image_path):
    return Image.open(image_path).convert("RGB")


# ---- a converted model for chat: tiny random weights whose answers are varied text, not blanks


@pytest.fixture(scope="session")
def chat_model(tokenizer, tmp_path_factory) -> Path:
    """A vltool-format model directory (fp32), as `vltool convert pth_to_hf` writes one."""
    from vltool.convert.vltool_format import save_vltool
    from vltool.templates import load_template

    torch.manual_seed(0)
    encoder = VisionEncoder(tiny_clip(), feature_layer=-2, select_strategy="default")
    llm = tiny_qwen2(initializer_range=0.2)  # wider weights: greedy answers wander over the vocabulary
    projector = MLPProjector(encoder.hidden_size, llm.config.hidden_size, depth=2)
    vlm = VisionLanguageModel(encoder, projector, llm, image_token_id=add_image_token(tokenizer))
    save_dir = tmp_path_factory.mktemp("chat") / "model"
    save_dir.mkdir()
    save_vltool(
        vlm,
        tokenizer,
        tiny_image_processor(),
        "pad",
        load_template("qwen_chat"),
        {"in_features": encoder.hidden_size, "out_features": llm.config.hidden_size, "depth": 2},
        {},
        save_dir,
        torch.float32,
        "2GB",
    )
    return save_dir
