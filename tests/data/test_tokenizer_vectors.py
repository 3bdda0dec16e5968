"""The llama.cpp Qwen2 tokenizer test vectors reproduce exactly with the shipped vocabulary."""

from conftest import ASSETS


def test_llama_cpp_qwen2_vectors(tokenizer):
    inputs = (ASSETS / "tokenizer-test-vectors" / "qwen2.inp").read_text(encoding="utf-8")
    strings = inputs.split("\n__ggml_vocab_test__\n")
    expected = (ASSETS / "tokenizer-test-vectors" / "qwen2.out").read_text().splitlines()
    strings = strings[: len(expected)]
    assert len(strings) == 43
    for text, ids in zip(strings, expected, strict=True):
        want = [int(x) for x in ids.split()]
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == want, repr(text)


def test_hello_world_and_special_tokens(tokenizer):
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]) == [
        151643,
        151644,
        151645,
        151646,
    ]
