"""Chat sessions: answers equal the batched path, the KV cache is reused across turns, streaming adds up."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_image_processor
from vltool.data.formats import load_samples
from vltool.data.images import ImageTransform
from vltool.infer.load import load_pipeline
from vltool.infer.pipeline import GenerationOptions, Pipeline
from vltool.infer.session import AnswerStreamer, ChatImage, ChatSession
from vltool.templates import load_template
from vltool.templates.message import Message

GREEDY = GenerationOptions(max_new_tokens=16)


@pytest.fixture(scope="module")
def pipeline(chat_model) -> Pipeline:
    return load_pipeline(chat_model)


@pytest.fixture
def pictures(tmp_path) -> list[ChatImage]:
    items = []
    for name, size, colour in (("red.png", (40, 30), "red"), ("blue.png", (30, 44), "blue")):
        Image.new("RGB", size, colour).save(tmp_path / name)
        items.append(ChatImage(str(tmp_path / name), Image.open(tmp_path / name).convert("RGB")))
    return items


def count_encoder_images(pipeline: Pipeline) -> list[int]:
    """Images through the vision encoder, per call (a forward hook on the encoder)."""
    calls: list[int] = []
    pipeline.model.vision_encoder.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    return calls


def test_first_answer_equals_batched_answer(pipeline, pictures):
    session = ChatSession(pipeline, GREEDY)
    answer = session.ask("What colour is it?", pictures[:1])
    expected = pipeline.answer([[Message("user", "<image>\nWhat colour is it?")]], [[pictures[0].image]], GREEDY)[0]
    assert answer == expected and len(answer) > 10  # varied text, not blanks


def test_cache_reuse_gives_the_tokens_of_re_encoding_the_history(pipeline, pictures):
    session = ChatSession(pipeline, GREEDY)
    calls = count_encoder_images(pipeline)
    turns = [("Describe it.", pictures[:1]), ("And this one?", pictures[1:]), ("Which is larger?", [])]
    previous = None
    for text, images in turns:
        before = len(calls)
        answer = session.ask(text, images)
        assert calls[before:] == ([len(images)] if images else [])  # only this turn's images were encoded
        history = session.conversation()[:-1]
        reference = pipeline.answer([history], [[item.image for item in session.images]], GREEDY)[0]
        assert answer == reference
        stats = session.stats
        # the previous prompt, and the part of its answer that re-tokenises the same, came from the cache
        assert stats.reused_tokens == 0 if previous is None else stats.reused_tokens >= previous.prompt_tokens
        assert stats.new_images == len(images)  # each image went through the encoder once, on its own turn
        previous = stats
    pipeline.model.vision_encoder._forward_hooks.clear()


def test_new_system_prompt_re_reads_the_conversation(pipeline, pictures):
    session = ChatSession(pipeline, GREEDY)
    session.ask("Describe it.", pictures[:1])
    session.system = "You answer in one word."
    answer = session.ask("Again?")
    # only "<|im_start|>system\nYou" is shared with the cache; the image is encoded again
    assert session.stats.reused_tokens == 4 and session.stats.new_images == 1
    history = session.conversation()[:-1]
    assert history[0] == Message("system", "You answer in one word.")
    assert answer == pipeline.answer([history], [[pictures[0].image]], GREEDY)[0]


def test_reset_forgets_messages_images_and_cache(pipeline, pictures):
    session = ChatSession(pipeline, GREEDY)
    first = session.ask("Describe it.", pictures[:1])
    session.reset()
    assert session.messages == [] and session.images == []
    assert session.ask("Describe it.", pictures[:1]) == first and session.stats.reused_tokens == 0


def test_streamed_pieces_add_up_to_the_answer(pipeline, pictures):
    session = ChatSession(pipeline, GenerationOptions(max_new_tokens=40))
    pieces: list[str] = []
    answer = session.ask("Describe it.", pictures[:1], on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == answer


def test_stop_request_ends_the_answer_and_keeps_what_was_said(pipeline, pictures):
    session = ChatSession(pipeline, GenerationOptions(max_new_tokens=200))
    generated = []
    answer = session.ask(
        "Describe it.", pictures[:1], on_text=generated.append, stop_requested=lambda: len(generated) >= 3
    )
    assert session.stats.interrupted and session.stats.answer_tokens < 200
    assert session.messages[-1] == Message("assistant", answer) and answer
    # the conversation goes on, from the cache, as if the short answer had been the whole answer
    follow_up = session.ask("Go on.")
    assert follow_up == pipeline.answer([session.conversation()[:-1]], [[pictures[0].image]], session.options)[0]
    assert session.stats.reused_tokens > 0


def test_stop_before_any_text_drops_the_turn(tiny_vlm, tokenizer, pictures):
    # default-initialised tiny weights answer with blank lines: one token in, there is no text yet
    blank = Pipeline(tiny_vlm, tokenizer, load_template("qwen_chat"), ImageTransform(tiny_image_processor(), "pad"))
    session = ChatSession(blank, GREEDY)
    assert session.ask("Describe it.", pictures[:1], stop_requested=lambda: True) == ""
    assert session.stats.interrupted and session.stats.answer_tokens == 1
    assert session.messages == [] and session.images == []
    assert session.to_sample() == {"messages": [], "images": []}


def test_multi_token_stop_word_ends_generation(pipeline, pictures):
    full = ChatSession(pipeline, GREEDY)
    answer = full.ask("Describe it.", pictures[:1])
    assert full.stats.answer_tokens == GREEDY.max_new_tokens
    # a stretch of the answer that is no single token becomes a stop word: generation must stop on it
    stop = answer[3:9]
    template = dataclasses.replace(pipeline.template, stop_words=(*pipeline.template.stop_words, stop))
    stopping = Pipeline(pipeline.model, pipeline.tokenizer, template, pipeline.image_transform)
    assert stopping.generate_kwargs(GREEDY)["stop_strings"] == [stop]
    session = ChatSession(stopping, GREEDY)
    assert session.ask("Describe it.", pictures[:1]) == answer[:3].strip()
    assert session.stats.answer_tokens < GREEDY.max_new_tokens
    kwargs = pipeline.generate_kwargs(GREEDY)  # qwen_chat's stop words are single tokens
    assert kwargs["eos_token_id"] == [151645, 151643] and "stop_strings" not in kwargs


@pytest.mark.parametrize("template", ["qwen_chat", "vicuna", "plain"])
def test_streamer_holds_back_stop_words_and_blanks(pipeline, template):
    streamed: list[str] = []
    stop_pipeline = Pipeline(pipeline.model, pipeline.tokenizer, load_template(template), pipeline.image_transform)
    streamer = AnswerStreamer(stop_pipeline, streamed.append)
    stop = stop_pipeline.template.stop_words[0]
    text = f"  A red {stop[:-1]}" + f"x square{stop}tail"
    for piece in (text[:5], text[5 : len(text) // 2], text[len(text) // 2 :]):
        streamer.on_finalized_text(piece)
    streamer.on_finalized_text("", stream_end=True)
    assert "".join(streamed) == stop_pipeline.cut(text)


def test_saved_conversation_loads_as_a_training_sample(pipeline, pictures, tmp_path):
    session = ChatSession(pipeline, GREEDY, system="Be brief.")
    session.ask("Describe it.", pictures[:1])
    session.ask("And this?", pictures[1:])
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([session.to_sample()]))
    (sample,) = load_samples(path)
    assert [m.role for m in sample.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert sample.messages[1].content == "<image>\nDescribe it."
    assert sample.images == [pictures[0].source, pictures[1].source]
    assert sample.messages[2].content == session.messages[1].content


def test_sampling_is_seeded_and_differs_from_greedy(pipeline, pictures):
    sampling = GenerationOptions(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9)
    answers = []
    for _ in range(2):
        torch.manual_seed(7)
        answers.append(ChatSession(pipeline, sampling).ask("Describe it.", pictures[:1]))
    greedy = ChatSession(pipeline, GREEDY).ask("Describe it.", pictures[:1])
    assert answers[0] == answers[1] != greedy


@pytest.mark.parametrize(
    "options", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=0), dict(repetition_penalty=0)]
)
def test_bad_generation_options_are_named(options):
    name = next(iter(options))
    with pytest.raises(Exception, match=f"invalid generation option {name}="):
        GenerationOptions(**options)


def test_session_on_a_huggingface_format_export(runs, image, tmp_path):
    from vltool.convert.pth_to_hf import convert_checkpoint

    run = runs("full")
    convert_checkpoint(str(run.config), run.checkpoint, tmp_path / "hf", save_format="huggingface", fp32=True)
    exported = load_pipeline(tmp_path / "hf")
    session = ChatSession(exported, GREEDY)
    picture = ChatImage("red_blue.png", image)
    first = session.ask("What colour is it?", [picture])
    first_prompt = session.stats.prompt_tokens
    second = session.ask("Are you sure?")
    assert session.stats.reused_tokens >= first_prompt
    assert first == exported.answer([[Message("user", "<image>\nWhat colour is it?")]], [[image]], GREEDY)[0]
    assert second == exported.answer([session.conversation()[:-1]], [[image]], GREEDY)[0]
