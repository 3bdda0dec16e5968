"""``python -m vltool.cli.gpu_check``: the prepared GPU check (:mod:`vltool.engine.gpu_check`).

Plain argparse, not a ``vltool`` Typer command: a borrowed GPU machine may lack Typer's
version or its dependencies, and this must run there with only the wheels
``tools/gpu_check.sh`` installs. Exits 1 when a check failed (a skipped one is not a failure).
"""

import argparse
import sys
import time
from pathlib import Path

from vltool.cli import quiet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(prog="python -m vltool.cli.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/vltool_gpu_check"), help="models, data, cache")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the default without CUDA)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default 8; tiny 4)")
    parser.add_argument("--layers", type=int, help="decoder layers of the 7B full finetunes (default: what fits)")
    parser.add_argument("--only", default="", help="comma-separated check keys (0.5b,0.5b-flash,7b,7b-flash,7b-qlora)")
    parser.add_argument("--steps", type=int, help="timed steps of every check (default 5; QLoRA 3)")
    parser.add_argument("--report", type=Path, help="also write the Markdown report here")
    parser.add_argument("--debug", action="store_true", help="let the libraries print their own notices")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the check, print its report; the exit code says whether every check that ran passed."""
    args = parse_args(argv)
    quiet.configure(args.debug)
    # torch and transformers load only now, after quiet.configure
    from transformers.utils import logging as hf_logging

    from vltool.engine.gpu_check import run_gpu_check
    from vltool.engine.gpu_check_report import describe_device, format_report
    from vltool.errors import VltoolError

    if not args.debug:
        hf_logging.disable_progress_bar()  # a bar per model load; the check prints its own progress
    started = time.perf_counter()
    print(describe_device(), flush=True)
    try:
        results = run_gpu_check(
            args.work_dir,
            tiny=True if args.tiny else None,
            batch_size=args.batch_size,
            layers=args.layers,
            only=[key for key in args.only.split(",") if key],
            steps=args.steps,
            echo=lambda line: print(line, flush=True),
        )
    except VltoolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = format_report(results)
    print(f"\n{report}\n\ntotal: {time.perf_counter() - started:.0f} s", flush=True)
    if args.report:
        args.report.write_text(report + "\n")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
