"""The seven model-loading options: declared once, the same in chat, mmbench and eval, passed on as one object."""

import dataclasses

import typer
from typer.main import get_command
from typer.testing import CliRunner

from vltool.cli.app import app
from vltool.cli.model_options import ModelOptions, with_model_options

MODEL_FLAGS = [
    "--prompt-template",
    "--visual-encoder",
    "--llava",
    "--visual-select-layer",
    "--bits",
    "--torch-dtype",
    "--device",
]


def option_flags(command_name: str) -> list[str]:
    command = get_command(app).commands[command_name]
    return [param.opts[0] for param in command.params if param.opts[0].startswith("--")]


def test_commands_list_the_options_where_they_did():
    chat = option_flags("chat")
    assert chat[chat.index("--system") + 1 : chat.index("--temperature")] == MODEL_FLAGS[:4]
    assert chat[chat.index("--seed") + 1 : chat.index("--draw-boxes")] == MODEL_FLAGS[4:]
    for name in ("mmbench", "eval"):
        assert option_flags(name)[-len(MODEL_FLAGS) :] == MODEL_FLAGS


def test_every_command_has_the_same_defaults_and_help():
    expected = {
        f"--{f.name.replace('_', '-')}": (f.default, f.metadata["help"]) for f in dataclasses.fields(ModelOptions)
    }
    for name in ("chat", "mmbench", "eval"):
        params = {param.opts[0]: param for param in get_command(app).commands[name].params}
        assert {flag: (params[flag].default, params[flag].help) for flag in MODEL_FLAGS} == expected


def test_the_command_receives_one_model_options():
    received = {}
    demo = typer.Typer()

    @demo.command()
    @with_model_options(precision_before="verbose")
    def run(
        model: str = typer.Argument(...),
        model_options: ModelOptions = ModelOptions(),
        verbose: bool = typer.Option(False, "--verbose"),
    ) -> None:
        received.update(model=model, options=model_options, verbose=verbose)

    result = CliRunner().invoke(demo, ["m", "--llava", "dir", "--bits", "4", "--visual-select-layer", "-1"])
    assert result.exit_code == 0, result.output
    assert received == {
        "model": "m",
        "options": ModelOptions(llava="dir", bits=4, visual_select_layer=-1),
        "verbose": False,
    }
