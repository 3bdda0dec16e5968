"""Throughput and latency of ``vltool serve``: requests/s and p50/p95 for 1, 4 and 16 concurrent clients.

Saves a random-weight model of the CPU demo's shape (CLIP-style ViT 64 px / 8 px patches /
hidden 64 / 2 layers, MLP projector, Qwen2-shaped LLM hidden 128 / 2 layers with the real
151,936-token vocabulary), starts the real ``vltool serve`` on 127.0.0.1 with each
``--max-batch-size``, and has C clients send R requests each, one after another: a 64 px PNG as
a data URL plus a question, greedy, ``max_tokens`` fixed. Random weights rarely emit the end
token, so nearly every answer has exactly ``max_tokens`` tokens; the printed token count says so.

    .venv/bin/python tools/serve_bench.py                       # 1/4/16 clients, batch 1 and 4
    .venv/bin/python tools/serve_bench.py --clients 4 --batch-sizes 1 --requests 5
"""

import argparse
import base64
import io
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serving import served  # noqa: E402  the same subprocess runner the tests use
from vltool.convert.vltool_format import save_vltool  # noqa: E402
from vltool.model.projectors import MLPProjector  # noqa: E402
from vltool.model.tokenizer import add_image_token, load_qwen2_tokenizer  # noqa: E402
from vltool.model.vision_encoder import VisionEncoder  # noqa: E402
from vltool.model.vlm import VisionLanguageModel  # noqa: E402
from vltool.templates import load_template  # noqa: E402

DEMO_CLIP = dict(image_size=64, patch_size=8, hidden_size=64, intermediate_size=256, num_hidden_layers=2)
DEMO_QWEN2 = dict(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2)
DEMO_QWEN2.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
QUESTIONS = ["What colour is the shape?", "Where is the shape?", "Which shape is it?", "Describe the picture."]


def save_demo_model(folder: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = load_qwen2_tokenizer()
    image_token_id = add_image_token(tokenizer)
    vision = CLIPVisionConfig(num_attention_heads=4, **DEMO_CLIP)
    encoder = VisionEncoder(CLIPVisionModel(vision), feature_layer=-1, select_strategy="default")
    llm = Qwen2ForCausalLM(Qwen2Config(**DEMO_QWEN2))
    projector = MLPProjector(encoder.hidden_size, llm.config.hidden_size, depth=2)
    model = VisionLanguageModel(encoder, projector, llm, image_token_id=image_token_id).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    target = folder / "demo"
    target.mkdir()
    projector_config = {"in_features": encoder.hidden_size, "out_features": 128, "depth": 2}
    save_vltool(
        model,
        tokenizer,
        processor,
        "pad",
        load_template("qwen_chat"),
        projector_config,
        {},
        target,
        torch.float32,
        "2GB",
    )
    return target


def data_url(index: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), ("red", "green", "blue", "yellow")[index % 4]).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_clients(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    """``clients`` threads, each sending ``requests`` requests in turn; latencies and overall rate."""
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(timeout=600) as http:
            for turn in range(requests):
                index = number * requests + turn
                content = [{"type": "image_url", "image_url": {"url": data_url(index)}}]
                content.append({"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]})
                body = {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
                started = time.perf_counter()
                reply = http.post(f"{url}/v1/chat/completions", json=body)
                reply.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens.append(reply.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "mean_tokens": statistics.mean(tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=8, help="Requests per client.")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        model = save_demo_model(Path(folder))
        print("| --max-batch-size | clients | requests | requests/s | p50 latency | p95 latency | answer tokens |")
        print("|---|---|---|---|---|---|---|")
        for batch in args.batch_sizes:
            with served(model, "--max-batch-size", str(batch), "--max-queue", "256") as server:
                run_clients(server.url, 1, 2, args.max_tokens)  # warm-up
                for clients in args.clients:
                    figures = run_clients(server.url, clients, args.requests, args.max_tokens)
                    print(
                        f"| {batch} | {clients} | {clients * args.requests} | {figures['requests_per_s']:.2f} | "
                        f"{figures['p50_s'] * 1000:.0f} ms | {figures['p95_s'] * 1000:.0f} ms | "
                        f"{figures['mean_tokens']:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
