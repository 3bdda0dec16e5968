"""Request checks and response shapes of the chat-completions protocol, without a server."""

import pytest

from vltool.serve.protocol import APIError, chunk, completion, parse_chat_request, usage
from vltool.templates.message import Message

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def parse(**body):
    return parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}, max_images=2)


def refusal(body: dict, max_images: int = 2) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_chat_request(body, max_images)
    assert caught.value.status == 400
    return caught.value


def test_parts_become_markers_in_their_place_and_only_user_turns_carry_images():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "And here?"}, {"type": "image_url", "image_url": "u2"}]},
    ]
    request = parse_chat_request({"model": "m", "messages": messages}, max_images=2)
    assert request.messages == [
        Message("system", "Be brief."),
        Message("user", "<image>\nWhat is it?"),
        Message("assistant", "A cat."),
        Message("user", "And here?\n<image>"),
    ]
    assert request.image_urls == ["data:image/png;base64,AAAA", "u2"]
    assistant_image = [{"role": "assistant", "content": [IMAGE]}, {"role": "user", "content": "Hi"}]
    assert refusal({"model": "m", "messages": assistant_image}).param == "messages[0].content[0].type"


def test_sampling_options_are_read_and_checked():
    sampling = parse(max_tokens=5, max_completion_tokens=7, temperature=0.5, top_k=-1, seed=3, stop="END").sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_k, sampling.seed) == (7, 0.5, 0, 3)
    assert sampling.stop == ("END",) and parse(stop=["a", "b"]).sampling.stop == ("a", "b")
    assert parse().sampling.max_tokens is None  # the server's default applies
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage
    assert not parse(stream_options={"include_usage": True}).include_usage  # usage chunks exist only in streams


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": [str(n) for n in range(17)]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"seed": True}, "seed"),
    ],
)
def test_options_vltool_cannot_honour_are_refused_naming_them(extra, param):
    error = refusal({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **extra})
    assert error.param == param and param in error.message and "\n" not in error.message


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "tool", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1].role"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "messages"),
        ([{"role": "user", "content": "what is <image>?"}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "video_url"}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "messages[0].content[0].image_url"),
    ],
)
def test_malformed_conversations_are_refused_naming_the_message(messages, param):
    assert refusal({"model": "m", "messages": messages}).param == param


def test_too_many_images_and_a_missing_model():
    error = refusal({"model": "m", "messages": [{"role": "user", "content": [IMAGE, IMAGE, IMAGE]}]})
    assert error.code == "too_many_images" and "at most 2 (--max-images)" in error.message
    assert refusal({"messages": [{"role": "user", "content": "Hi"}]}).param == "model"


def test_response_shapes_are_openai_s():
    counts = usage(40, 2)
    assert counts == {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
    whole = completion("id", 1, "m", "Hi.", "stop", counts)
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hi.",
    }
    piece = chunk("id", 1, "m", {"content": "H"})
    assert piece["object"] == "chat.completion.chunk" and piece["choices"][0]["delta"] == {"content": "H"}
    last = chunk("id", 1, "m", {}, None, counts)
    assert last["choices"] == [] and last["usage"] == counts
    assert APIError(503, "busy").body() == {
        "error": {"message": "busy", "type": "server_error", "param": None, "code": None}
    }
