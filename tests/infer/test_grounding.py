import io

import pytest
from PIL import Image

from vltool.infer.grounding import PALETTE, Box, draw_boxes, parse_boxes, pixel_text

WHITE = (255, 255, 255)


# --- parse_boxes ---


def test_parse_single_box():
    text = "The dog is at <ref>the dog</ref><box>(100,200),(500,750)</box>."
    assert parse_boxes(text) == [Box("the dog", 100, 200, 500, 750)]


def test_parse_several_boxes_after_one_ref():
    text = "<ref>dogs</ref><box>(0,0),(500,500)</box><box>(500,500),(1000,1000)</box>"
    assert parse_boxes(text) == [Box("dogs", 0, 0, 500, 500), Box("dogs", 500, 500, 1000, 1000)]


def test_parse_two_refs_in_order():
    text = "<ref>a cat</ref><box>(10,20),(30,40)</box> and <ref>a dog</ref><box>(50,60),(70,80)</box>"
    assert parse_boxes(text) == [Box("a cat", 10, 20, 30, 40), Box("a dog", 50, 60, 70, 80)]


def test_parse_box_without_ref_has_empty_label():
    text = "<ref>cat</ref><box>(1,2),(3,4)</box> something <box>(5,6),(7,8)</box>"
    assert parse_boxes(text) == [Box("cat", 1, 2, 3, 4), Box("", 5, 6, 7, 8)]


def test_parse_normalises_reversed_corners():
    assert parse_boxes("<box>(500,750),(100,200)</box>") == [Box("", 100, 200, 500, 750)]
    assert parse_boxes("<box>(500,200),(100,750)</box>") == [Box("", 100, 200, 500, 750)]
    box = Box("x", 9, 8, 1, 2)
    assert (box.x1, box.y1, box.x2, box.y2) == (1, 2, 9, 8)


def test_parse_tolerates_whitespace():
    text = "<ref> the cat </ref> <box>( 10 , 20 ) , ( 30 ,40 )</box>\n<box> (50,60),(70,80) </box>"
    assert parse_boxes(text) == [Box("the cat", 10, 20, 30, 40), Box("the cat", 50, 60, 70, 80)]


@pytest.mark.parametrize(
    "body",
    [
        "(10,20),(30)",
        "(10,20)",
        "",
        "(a,b),(c,d)",
        "(10,20),(30,1001)",
        "(1001,0),(10,10)",
        "(-5,0),(10,10)",
        "(1.5,0),(10,10)",
        "(10,20),(30,40),(50,60)",
    ],
)
def test_parse_ignores_malformed_and_out_of_range(body):
    assert parse_boxes(f"<ref>cat</ref><box>{body}</box>") == []


def test_parse_keeps_good_boxes_next_to_malformed_ones():
    text = "<ref>cat</ref><box>(10,20),(30,2000)</box><box>(0,0),(1000,1000)</box>"
    assert parse_boxes(text) == [Box("cat", 0, 0, 1000, 1000)]


def test_parse_text_without_boxes():
    assert parse_boxes("") == []
    assert parse_boxes("No grounding here, only <ref>a ref</ref>.") == []


# --- Box.to_pixels ---


def test_to_pixels_non_square():
    assert Box("a", 100, 200, 500, 750).to_pixels(640, 480) == (64, 96, 320, 360)
    assert Box("a", 0, 0, 1000, 1000).to_pixels(640, 480) == (0, 0, 640, 480)


def test_to_pixels_rounds_half_up():
    # 1 -> 0.5 -> 1, 3 -> 1.5 -> 2, 5 -> 2.5 -> 3 (round() would give 2), 999 -> 499.5 -> 500
    assert Box("a", 1, 3, 5, 999).to_pixels(500, 500) == (1, 2, 3, 500)
    # 333 * 640 / 1000 = 213.12 -> 213; 667 * 480 / 1000 = 320.16 -> 320; 1 * 480 / 1000 = 0.48 -> 0
    assert Box("a", 333, 1, 334, 667).to_pixels(640, 480) == (213, 0, 214, 320)


def test_to_pixels_clamps_to_image():
    assert Box("a", -10, -1, 1200, 2000).to_pixels(640, 480) == (0, 0, 640, 480)


# --- pixel_text ---


def test_pixel_text_single_box():
    text = "It is <ref>the dog</ref><box>(100,200),(500,750)</box> on the left."
    assert pixel_text(text, 640, 480) == "It is the dog [64, 96, 320, 360] on the left."


def test_pixel_text_several_boxes():
    text = "<ref>dogs</ref><box>(0,0),(500,500)</box> <box>(500,500),(1000,1000)</box>"
    assert pixel_text(text, 640, 480) == "dogs [0, 0, 320, 240] [320, 240, 640, 480]"


def test_pixel_text_two_refs_and_box_without_ref():
    text = (
        "<ref>cat</ref><box>(0,0),(100,100)</box> and <ref>dog</ref><box>(900,900),(1000,1000)</box>, "
        "also <box>(500,0),(1000,500)</box>."
    )
    assert pixel_text(text, 640, 480) == ("cat [0, 0, 64, 48] and dog [576, 432, 640, 480], also [320, 0, 640, 240].")


def test_pixel_text_drops_malformed_boxes():
    assert pixel_text("<ref>cat</ref><box>(0,0),(1200,10)</box> here", 640, 480) == "cat here"
    text = "<ref>cat</ref><box>(0,0),(1200,10)</box><box>(0,0),(1000,1000)</box>"
    assert pixel_text(text, 640, 480) == "cat [0, 0, 640, 480]"


def test_pixel_text_leaves_plain_text_alone():
    text = "Nothing to ground, (1,2),(3,4) is just text."
    assert pixel_text(text, 640, 480) == text


# --- draw_boxes ---


@pytest.fixture
def white():
    return Image.new("RGB", (640, 480), WHITE)


def test_draw_boxes_returns_a_copy(white):
    drawn = draw_boxes(white, [Box("dog", 100, 200, 500, 750)])
    assert drawn is not white
    assert drawn.size == (640, 480)
    assert drawn.mode == "RGB"
    assert white.getcolors() == [(640 * 480, WHITE)]
    assert drawn.getcolors(maxcolors=640 * 480) != [(640 * 480, WHITE)]


def test_draw_boxes_converts_to_rgb():
    grey = Image.new("L", (100, 80), 255)
    drawn = draw_boxes(grey, [Box("", 100, 100, 900, 900)])
    assert grey.mode == "L"
    assert drawn.mode == "RGB"
    assert drawn.getpixel((50, 72)) == PALETTE[0]


def test_draw_boxes_outline_inside_and_outside(white):
    drawn = draw_boxes(white, [Box("dog", 100, 200, 500, 750)])  # pixels (64, 96, 320, 360)
    colour = PALETTE[0]
    for point in [(64, 300), (320, 300), (192, 360), (192, 96), (300, 96)]:
        assert drawn.getpixel(point) == colour, point
    # 640x480 draws 3 px lines, inward from the box edges
    assert drawn.getpixel((66, 300)) == colour
    assert drawn.getpixel((192, 358)) == colour
    # inside, well away from the label tag at the top-left corner
    for point in [(192, 228), (300, 340), (80, 340)]:
        assert drawn.getpixel(point) == WHITE, point
    for point in [(0, 0), (63, 300), (321, 300), (192, 361), (192, 95), (600, 450)]:
        assert drawn.getpixel(point) == WHITE, point


def test_draw_boxes_label_tag_at_top_left(white):
    drawn = draw_boxes(white, [Box("dog", 100, 200, 500, 750)])
    # the tag (box colour, with white text on this dark red) fills the area just inside the corner
    corner = (67, 99, 95, 112)  # 28 x 13 pixels
    counts = {colour: count for count, colour in drawn.crop(corner).getcolors(maxcolors=28 * 13)}
    assert counts[PALETTE[0]] > 28 * 13 // 3
    assert len(counts) > 2  # the anti-aliased text
    unlabelled = draw_boxes(white, [Box("", 100, 200, 500, 750)])
    assert unlabelled.crop(corner).getcolors() == [(28 * 13, WHITE)]


def test_draw_boxes_tag_stays_inside_image(white):
    drawn = draw_boxes(white, [Box("a long label", 990, 990, 1000, 1000)])
    # the box is in the bottom-right corner, so the tag is pushed back inside and ends at the image edge
    assert drawn.getpixel((639, 479)) == PALETTE[0]
    assert drawn.getpixel((630, 479)) == PALETTE[0]


def test_draw_boxes_one_colour_per_label(white):
    boxes = [
        Box("cat", 100, 100, 400, 400),
        Box("dog", 600, 100, 900, 400),
        Box("cat", 100, 600, 400, 900),
    ]
    drawn = draw_boxes(white, boxes)  # pixels (64, 48, 256, 192), (384, 48, 576, 192), (64, 288, 256, 432)
    # left edges, part-way down each box
    assert drawn.getpixel((64, 120)) == PALETTE[0]
    assert drawn.getpixel((384, 120)) == PALETTE[1]
    assert drawn.getpixel((64, 360)) == PALETTE[0]
    assert PALETTE[0] != PALETTE[1]


def test_draw_boxes_saves_as_jpeg(white):
    drawn = draw_boxes(white, parse_boxes("<ref>dog</ref><box>(100,200),(500,750)</box><box>(600,100),(900,300)</box>"))
    buffer = io.BytesIO()
    drawn.save(buffer, format="JPEG")
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        assert reopened.format == "JPEG"
        assert reopened.size == (640, 480)
