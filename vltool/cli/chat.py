"""``vltool chat``: a terminal conversation with images, or one answer for scripts.

Interactive when standard input is a terminal and no ``--prompt`` is given; otherwise the
prompt (``--prompt`` or standard input) is answered once and only the answer goes to stdout.
"""

import json
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from vltool.cli.model_options import ModelChoice, ModelOptions, with_model_options
from vltool.errors import ConfigError, VltoolError

if TYPE_CHECKING:  # the model stack loads only when a command runs, so `vltool --help` stays fast
    from vltool.infer.session import ChatImage, ChatSession

HELP = """\
[bold]/image PATH|URL ...[/]  attach images to your next message
[bold]/reset[/]               start a new conversation (keeps the system prompt)
[bold]/history[/]             show the conversation
[bold]/save FILE[/]           write the conversation as a training sample (messages JSON)
[bold]/system TEXT[/]         set the system prompt ([bold]/system[/] alone shows it)
[bold]/help[/]                this list
[bold]/exit[/]                quit (or Ctrl-D); Ctrl-C stops an answer"""


@with_model_options(precision_before="draw_boxes")
def chat(
    model: str = typer.Argument(
        ..., help="A model directory from `vltool convert pth_to_hf`, or an LLM path used with --llava."
    ),
    image: list[str] = typer.Option([], "--image", help="Image path or http(s) URL for the first message; repeat."),
    prompt: str | None = typer.Option(None, "--prompt", help="Answer this once, print only the answer, exit."),
    system: str | None = typer.Option(None, "--system", help="System prompt (default: the template's)."),
    model_options: ModelOptions = ModelOptions(),  # from --prompt-template; --bits, --torch-dtype, --device go later
    temperature: float = typer.Option(0.0, "--temperature", help="0 decodes greedily; above 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass when sampling."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest tokens (0 = all)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Above 1 discourages repeats."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest answer in tokens."),
    seed: int | None = typer.Option(None, "--seed", help="Seed sampling for repeatable answers."),
    draw_boxes: Path | None = typer.Option(
        None, "--draw-boxes", help="Save the latest image with the answer's <box> regions drawn to this file."
    ),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print each answer when it is complete."),
) -> None:
    """Chat with a model about images in the terminal, or answer one prompt for a script."""
    from vltool.infer.pipeline import GenerationOptions

    options = GenerationOptions(max_new_tokens, temperature, top_p, top_k, repetition_penalty)
    one_shot = prompt is not None or not sys.stdin.isatty()
    if one_shot and prompt is None:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise ConfigError("standard input is empty: pipe a prompt in, or pass --prompt TEXT.")
    if draw_boxes is not None:
        _check_boxes_file(draw_boxes)
    choice = ModelChoice(model, model_options)
    choice.check()
    images = [_open(source) for source in image]  # bad images fail before the model loads
    status = Console(stderr=True)
    with status.status("loading the model...") if not one_shot else nullcontext():
        pipeline = choice.load()
    from vltool.infer.session import ChatSession

    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    session = ChatSession(pipeline, options, system)
    if one_shot:
        _answer_once(session, prompt or "", images, draw_boxes, stream=not no_stream)
    else:
        Repl(session, Console(emoji=False, highlight=False), draw_boxes, stream=not no_stream, pending=images).run(
            model
        )


def _check_boxes_file(path: Path) -> None:
    """``--draw-boxes`` must name an image file in an existing folder, so no answer's drawing is lost."""
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"--draw-boxes {path}: give an image file name such as boxes.jpg or boxes.png.")
    if not path.parent.is_dir():
        raise ConfigError(f"--draw-boxes {path}: folder {path.parent} does not exist; create it first.")


def _open(source: str) -> "ChatImage":
    from vltool.data.images import open_image
    from vltool.infer.session import ChatImage

    return ChatImage(source, open_image(source))


def _answer_once(
    session: "ChatSession", prompt: str, images: list["ChatImage"], boxes_to: Path | None, stream: bool
) -> None:
    """Answer one prompt: only the answer on stdout; notes about boxes go to stderr."""
    out = sys.stdout
    on_text = (lambda piece: (out.write(piece), out.flush())) if stream and out.isatty() else None
    answer = session.ask(prompt, images, on_text=on_text)
    out.write(("" if on_text else answer) + "\n")
    out.flush()
    _report_boxes(session, answer, Console(stderr=True), boxes_to, show_text=False)


def _report_boxes(
    session: "ChatSession",
    answer: str,
    console: Console,
    boxes_to: Path | None,
    show_text: bool,
) -> None:
    """Show an answer's boxes in the latest image's pixels and draw them when asked."""
    from vltool.infer.grounding import draw_boxes, parse_boxes, pixel_text

    boxes = parse_boxes(answer)
    if not boxes:
        return
    if not session.images:
        console.print("[dim](the answer has boxes but the conversation has no image to place them on)[/]")
        return
    latest = session.images[-1]
    width, height = latest.image.size
    if show_text:
        shown = escape(pixel_text(answer, width, height))
        console.print(f"[dim]in pixels of {escape(latest.source)} ({width}x{height}):[/] {shown}")
    if boxes_to is not None:
        try:
            draw_boxes(latest.image, boxes).save(boxes_to)
        except OSError as err:
            console.print(f"[yellow]boxes not drawn: {escape(str(err))}[/]")
            return
        console.print(f"[dim]{len(boxes)} box(es) drawn on {escape(latest.source)}: {escape(str(boxes_to))}[/]")


@dataclass
class Repl:
    """The interactive loop: read a line, run a command or answer it, repeat until /exit or Ctrl-D."""

    session: "ChatSession"
    console: Console
    boxes_to: Path | None
    stream: bool
    pending: list["ChatImage"] = field(default_factory=list)
    interrupted: bool = False

    def run(self, model: str) -> None:
        """Talk until the user leaves."""
        template = self.session.pipeline.template.name
        self.console.print(
            f"[bold]vltool chat[/] {escape(model)} (template {template}). Type /help for commands, Ctrl-D to quit."
        )
        self._show_pending()
        commands: dict[str, Callable[[str], bool]] = {
            "/image": self._image,
            "/reset": self._reset,
            "/history": self._history,
            "/save": self._save,
            "/system": self._system,
            "/help": self._help,
            "/exit": self._exit,
            "/quit": self._exit,
        }
        while True:
            try:
                line = self.console.input("[bold green]>>> [/]").strip()
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line
                self.console.print()
                continue
            except EOFError:  # Ctrl-D
                self.console.print()
                return
            if not line:
                continue
            if line.startswith("/"):
                name, _, rest = line.partition(" ")
                command = commands.get(name)
                if command is None:
                    self.console.print(f"[yellow]unknown command {escape(name)}; /help lists them.[/]")
                elif not command(rest.strip()):
                    return
                continue
            self._answer(line)

    def _answer(self, text: str) -> None:
        images, self.pending = self.pending, []
        self.interrupted = False
        started = time.perf_counter()
        with _sigint_sets(self._interrupt):
            if self.stream:
                answer = self.session.ask(text, images, self._print_piece, lambda: self.interrupted)
                self.console.print()
            else:
                with self.console.status("thinking... (Ctrl-C stops)"):
                    answer = self.session.ask(text, images, stop_requested=lambda: self.interrupted)
                self.console.print(answer, markup=False, highlight=False)
        stats = self.session.stats
        seconds = time.perf_counter() - started
        stopped = "[yellow]stopped[/]; " if stats.interrupted else ""
        self.console.print(
            f"[dim]({stopped}{stats.answer_tokens} tokens in {seconds:.1f} s; "
            f"{stats.reused_tokens} of {stats.prompt_tokens} prompt tokens reused from the cache)[/]"
        )
        _report_boxes(self.session, answer, self.console, self.boxes_to, show_text=True)

    def _print_piece(self, piece: str) -> None:
        self.console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def _interrupt(self) -> None:
        self.interrupted = True

    def _show_pending(self) -> None:
        if self.pending:
            names = ", ".join(escape(item.source) for item in self.pending)
            self.console.print(f"[dim]{len(self.pending)} image(s) attached to your next message: {names}[/]")

    def _image(self, rest: str) -> bool:
        try:
            sources = shlex.split(rest)
        except ValueError as err:
            sources, rest = [], str(err)
        if not sources:
            self.console.print("[yellow]usage: /image PATH|URL ... (quote paths with spaces)[/]")
            return True
        for source in sources:
            try:
                self.pending.append(_open(source))
            except VltoolError as err:
                self.console.print(f"[yellow]image not attached: {escape(str(err))}[/]")
        self._show_pending()
        return True

    def _reset(self, _rest: str) -> bool:
        self.session.reset()
        self.pending = []
        self.console.print("[dim]conversation cleared.[/]")
        return True

    def _history(self, _rest: str) -> bool:
        if not self.session.messages:
            self.console.print("[dim](no messages yet)[/]")
        sources = iter(item.source for item in self.session.images)
        for message in self.session.conversation():
            content = message.content
            while "<image>" in content:
                content = content.replace("<image>", f"[image: {next(sources)}]", 1)
            self.console.print(f"[bold]{message.role}:[/] {escape(content)}")
        return True

    def _save(self, rest: str) -> bool:
        if not rest:
            self.console.print("[yellow]usage: /save FILE[/]")
            return True
        path = Path(rest).expanduser()
        try:
            path.write_text(json.dumps([self.session.to_sample()], ensure_ascii=False, indent=1) + "\n")
        except OSError as err:
            self.console.print(f"[yellow]not saved: {escape(str(err))}[/]")
            return True
        turns = sum(message.role == "assistant" for message in self.session.messages)
        self.console.print(f"[dim]saved {turns} turn(s) to {escape(str(path))}[/]")
        return True

    def _system(self, rest: str) -> bool:
        if not rest:
            current = self.session.system
            shown = escape(current) if current is not None else "(the template's default)"
            self.console.print(f"[dim]system prompt:[/] {shown}")
            return True
        self.session.system = rest
        self.console.print("[dim]system prompt set; the next answer re-reads the conversation with it.[/]")
        return True

    def _help(self, _rest: str) -> bool:
        self.console.print(HELP)
        return True

    def _exit(self, _rest: str) -> bool:
        return False


@contextmanager
def _sigint_sets(handler: Callable[[], None]) -> Iterator[None]:
    """While inside, Ctrl-C calls ``handler`` (generation stops after the current token) instead of raising."""

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        handler()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
