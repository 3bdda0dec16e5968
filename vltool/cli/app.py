"""The ``vltool`` Typer app: registers the commands and turns errors into one line and an exit code."""

import sys
import traceback

import typer
from rich.console import Console

from vltool.cli import bench, chat, check_dataset, configs, mmbench, prepare_dataset, quiet, serve, train
from vltool.cli import eval as eval_cli
from vltool.cli.convert import convert_app
from vltool.cli.train import expand_bare_resume
from vltool.errors import VltoolError, user_message

app = typer.Typer(
    name="vltool",
    help="Train, convert, chat with, serve and benchmark LLaVA-style vision-language models.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks for errors, and what the libraries print about themselves."
    ),
) -> None:
    _state["debug"] = debug
    quiet.configure(debug)  # before a command imports transformers, bitsandbytes, DeepSpeed or mmengine's runner


app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})(train.train)
app.command("list-cfg")(configs.list_cfg)
app.command("copy-cfg")(configs.copy_cfg)
app.command("check-dataset", context_settings={"allow_extra_args": True})(check_dataset.check_dataset)
app.command("prepare-dataset", context_settings={"allow_extra_args": True})(prepare_dataset.prepare_dataset)
app.add_typer(convert_app, name="convert")
app.command("chat")(chat.chat)
app.command("mmbench")(mmbench.mmbench)
app.command("eval")(eval_cli.eval_command)
app.command("bench", context_settings={"allow_extra_args": True})(bench.bench)
app.command("serve")(serve.serve)


def main() -> None:
    """Console-script entry point: user errors print one line and exit 1; ``--debug`` shows tracebacks."""
    sys.argv = expand_bare_resume(sys.argv)
    try:
        # without standalone mode click returns a command's exit code instead of exiting
        code = app(standalone_mode=False)
    except VltoolError as err:
        _fail(user_message(err))
    except (OSError, ValueError) as err:
        _fail(f"{type(err).__name__}: {err}")
    except KeyboardInterrupt:
        _fail("interrupted")
    except typer.TyperException as err:  # usage errors: Typer's own message and exit code
        err.show()
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    if _state["debug"] or "--debug" in sys.argv:
        traceback.print_exc()
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


if __name__ == "__main__":  # `python -m vltool.cli.app`: how torchrun reruns `vltool train`
    main()
