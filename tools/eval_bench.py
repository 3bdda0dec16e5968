"""What MMBench evaluation costs: answering throughput by batch size, and reading + scoring a full-size TSV.

1. Answering: a random-weight model of real shape (Qwen2.5-0.5B + CLIP-L/14-336, as
   ``tools/chat_bench.py`` builds it) answers MMBench-style prompts greedily at several batch
   sizes; prints prompts per second and how often the batched answers equal the unbatched ones.
2. Scoring: a synthetic MMBench-dev-sized TSV (1,164 questions, 4 options, a 336x336 JPEG each)
   is read and checked, its CircularEval passes are built, and a predictions file for every
   pass is scored (what ``vltool mmbench --predictions`` does), timed step by step.

    .venv/bin/python tools/eval_bench.py             # 0.5B + CLIP-L/336, fp32
    .venv/bin/python tools/eval_bench.py --small     # tiny shapes: a quick check
"""

import argparse
import base64
import io
import platform
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from chat_bench import build
from PIL import Image
from rich.console import Console

from vltool.eval.mmbench import load_questions, mmbench_requests, rescore_mmbench
from vltool.infer.pipeline import GenerationOptions
from vltool.templates.message import Message

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def write_tsv(path: Path, questions: int, image_size: int, seed: int = 0) -> Path:
    """An MMBench-layout dev TSV: one noisy JPEG per question, four colour options, six categories."""
    rng = random.Random(seed)
    rows = []
    for index in range(questions):
        options = rng.sample(COLOURS, 4)
        pixels = rng.randbytes(image_size * image_size * 3)
        buffer = io.BytesIO()
        Image.frombytes("RGB", (image_size, image_size), pixels).save(buffer, format="JPEG", quality=85)
        rows.append(
            {
                "index": index,
                "question": "What is the main colour of the picture?",
                "hint": "",
                **dict(zip("ABCD", options, strict=True)),
                "answer": rng.choice("ABCD"),
                "category": f"category_{index % 20}",
                "l2-category": f"ability_{index % 6}",
                "split": "dev",
                "image": base64.b64encode(buffer.getvalue()).decode(),
            }
        )
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def answering(small: bool, prompts: int, batch_sizes: list[int], max_new_tokens: int) -> None:
    pipeline = build(small)
    params = sum(p.numel() for p in pipeline.model.parameters()) / 1e6
    print(f"model: {params:.0f}M parameters, {pipeline.model.image_seq_length} visual tokens per image, fp32")
    with tempfile.TemporaryDirectory() as folder:
        table, rows = load_questions(write_tsv(Path(folder) / "q.tsv", prompts, 336), False, Console(quiet=True))
        requests = mmbench_requests(table, rows)
        options = GenerationOptions(max_new_tokens=max_new_tokens)
        pipeline.answer([[Message("user", requests[0].text)]], [requests[0].images()], GenerationOptions(2))  # warm-up
        reference = None
        for batch_size in batch_sizes:
            started, answers = time.perf_counter(), []
            for start in range(0, len(requests), batch_size):
                batch = requests[start : start + batch_size]
                conversations = [[Message("user", r.text)] for r in batch]
                answers += pipeline.answer(conversations, [r.images() for r in batch], options)
            seconds = time.perf_counter() - started
            reference = reference or answers
            same = sum(a == b for a, b in zip(answers, reference, strict=True))
            print(
                f"batch {batch_size:>2}: {len(requests) / seconds:6.2f} prompts/s ({seconds:6.1f} s for "
                f"{len(requests)}), answers equal to batch {batch_sizes[0]}'s: {same}/{len(requests)}"
            )


def scoring(questions: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        tsv = write_tsv(Path(folder) / "MMBench_DEV_like.tsv", questions, 336)
        print(
            f"TSV: {questions} questions, {tsv.stat().st_size / 2**20:.0f} MiB (written in "
            f"{time.perf_counter() - started:.1f} s)"
        )
        quiet = Console(quiet=True)
        started = time.perf_counter()
        table, rows = load_questions(tsv, True, quiet)
        print(f"read, check and build CircularEval passes: {time.perf_counter() - started:.2f} s -> {len(rows)} rows")
        started = time.perf_counter()
        requests = mmbench_requests(table, rows)
        print(f"prompts and image hashes for every row: {time.perf_counter() - started:.2f} s")
        rng = random.Random(1)
        predictions = pd.DataFrame(
            {"index": rows["index"], "prediction": [rng.choice("ABCD") for _ in range(len(rows))]}
        )
        predictions.to_csv(Path(folder) / "predictions.csv", index=False)
        started = time.perf_counter()
        files = rescore_mmbench(Path(folder) / "predictions.csv", tsv, Path(folder) / "out", True, quiet)
        accuracy = pd.read_csv(files.accuracy)["Overall"].item()
        print(
            f"rescore (read again, extract, CircularEval, xlsx + csv + chart): {time.perf_counter() - started:.2f} s;"
            f" random letters score {accuracy:.1%} circular (chance 1/256 = 0.4%)"
        )
        del requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes instead of 0.5B + CLIP-L/336")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--questions", type=int, default=1164, help="questions in the scoring TSV")
    parser.add_argument("--scoring-only", action="store_true", help="skip the answering part")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if not args.scoring_only:
        answering(args.small, args.prompts, args.batch_sizes, args.max_new_tokens)
    scoring(args.questions)


if __name__ == "__main__":
    main()
