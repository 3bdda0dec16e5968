"""What keeping the KV cache across chat turns saves: per-turn time with reuse vs re-encoding the history.

Builds a random-weight model of real shape (Qwen2.5-0.5B LLM + CLIP-L/14-336 encoder by
default), then holds the same conversation twice: once in one ``ChatSession`` (the cache is
kept, only new tokens and new images are encoded), once re-encoding the whole history and
every image each turn, as XTuner's chat does. Prints each turn's time, prompt length and how
much was reused, and checks that both give the same answers.

    .venv/bin/python tools/chat_bench.py                 # 0.5B + CLIP-L/336, fp32
    .venv/bin/python tools/chat_bench.py --small         # tiny shapes: a quick check
"""

import argparse
import platform
import time

import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

from vltool.data.images import ImageTransform
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.infer.session import ChatImage, ChatSession
from vltool.model.projectors import MLPProjector
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer
from vltool.model.vision_encoder import VisionEncoder
from vltool.model.vlm import VisionLanguageModel
from vltool.templates import load_template

QWEN2_5_0_5B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
)
CLIP_L_336 = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096)
CLIP_L_336.update(num_hidden_layers=24, num_attention_heads=16)
SMALL_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
SMALL_LLM.update(num_key_value_heads=2)
SMALL_CLIP = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64)
SMALL_CLIP.update(num_hidden_layers=2, num_attention_heads=4)
TURNS = [
    ("Describe this picture in detail.", "red"),
    ("What is in the top left corner?", None),
    ("Now compare it with this one.", "blue"),
    ("Which of the two is brighter, and why?", None),
    ("Summarise our conversation.", None),
]


def build(small: bool) -> Pipeline:
    torch.manual_seed(0)
    tokenizer = load_qwen2_tokenizer()
    image_token_id = add_image_token(tokenizer)
    clip = CLIP_L_336 if not small else SMALL_CLIP
    encoder = VisionEncoder(CLIPVisionModel(CLIPVisionConfig(**clip)), feature_layer=-2, select_strategy="default")
    llm_shape = QWEN2_5_0_5B if not small else SMALL_LLM
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, initializer_range=0.2 if small else 0.02, **llm_shape))
    projector = MLPProjector(encoder.hidden_size, llm.config.hidden_size, depth=2)
    model = VisionLanguageModel(encoder, projector, llm, image_token_id).eval()
    size = clip["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return Pipeline(model, tokenizer, load_template("qwen_chat"), ImageTransform(processor, "pad"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes instead of 0.5B + CLIP-L/336")
    parser.add_argument("--answer-tokens", type=int, default=32, help="max_new_tokens per answer")
    args = parser.parse_args()
    pipeline = build(args.small)
    options = GenerationOptions(max_new_tokens=args.answer_tokens)
    pictures = {
        "red": ChatImage("red", Image.new("RGB", (640, 480), (200, 40, 40))),
        "blue": ChatImage("blue", Image.new("RGB", (480, 640), (40, 40, 200))),
    }
    params = sum(p.numel() for p in pipeline.model.parameters()) / 1e6
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {params:.0f}M parameters, {pipeline.model.image_seq_length} visual tokens per image, fp32")
    ChatSession(pipeline, GenerationOptions(max_new_tokens=2)).ask(*TURNS[0][:1], [pictures["red"]])  # warm-up
    kept = ChatSession(pipeline, options)
    header = ("turn", 4), ("prompt", 7), ("reused", 7), ("new imgs", 8), ("kept cache", 11), ("re-encode", 10)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'speed-up':>9}")
    totals = [0.0, 0.0]
    for number, (text, image) in enumerate(TURNS, start=1):
        images = [pictures[image]] if image else []
        history = ChatSession(pipeline, options, messages=list(kept.messages), images=list(kept.images))
        started = time.perf_counter()
        answer = kept.ask(text, images)
        kept_s = time.perf_counter() - started
        stats = kept.stats
        started = time.perf_counter()
        reference = history.ask(text, images)
        fresh_s = time.perf_counter() - started
        if reference != answer:
            raise SystemExit(f"turn {number}: answers differ with and without the cache")
        totals[0] += kept_s
        totals[1] += fresh_s
        print(
            f"{number:>4} {stats.prompt_tokens:>7} {stats.reused_tokens:>7} {stats.new_images:>8} "
            f"{kept_s:>10.2f}s {fresh_s:>9.2f}s {fresh_s / kept_s:>8.1f}x"
        )
    print(f"all turns: {totals[0]:.1f} s with the cache kept, {totals[1]:.1f} s re-encoding; answers identical")


if __name__ == "__main__":
    main()
