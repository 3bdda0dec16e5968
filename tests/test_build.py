"""Configs become objects through one function; a misspelt key is a one-line error naming the type."""

import pytest

from vltool.build import build
from vltool.errors import ConfigError


class Part:
    def __init__(self, width: int, depth: int = 2) -> None:
        self.width, self.depth = width, depth


class Whole:
    def __init__(self, part: Part, name: str) -> None:
        self.part, self.name = part, name


def test_nested_dicts_build_bottom_up_with_extra_arguments():
    whole = build(dict(type=Whole, part=dict(type=Part, width=3)), name="x")
    assert isinstance(whole.part, Part) and whole.part.width == 3 and whole.name == "x"


def test_misspelt_or_missing_key_names_the_type_and_its_keys():
    with pytest.raises(
        ConfigError, match=r"type Part: got an unexpected keyword argument 'dpeth'; its keys are: width, depth\."
    ):
        build(dict(type=Part, width=3, dpeth=1))
    with pytest.raises(ConfigError, match=r"type Part: missing a required argument: 'width'"):
        build(dict(type=Part))


def test_a_type_error_inside_the_call_is_not_relabelled():
    def fails(width: int) -> None:
        raise TypeError("inside")

    with pytest.raises(TypeError, match="inside"):
        build(dict(type=fails, width=1))
