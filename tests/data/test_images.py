"""Image loading: EXIF orientation, URLs (a local HTTP server; no network), and errors users can act on."""

import http.server
import threading
from functools import partial

import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessorPil
from transformers.image_utils import load_image as transformers_load_image

from vltool.data.images import ImageTransform, load_image, open_image
from vltool.errors import DatasetError
from vltool.model.blip2_encoder import RandomResizedCropFlip


@pytest.fixture
def sideways_photo(tmp_path):
    """A 40x20 JPEG stored sideways: left half red, right half blue, orientation tag 6 (rotate 90° clockwise)."""
    stored = Image.new("RGB", (40, 20), "red")
    stored.paste(Image.new("RGB", (20, 20), "blue"), (20, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=100)
    return path


def test_exif_orientation_is_applied_as_transformers_does(sideways_photo):
    upright = load_image(sideways_photo)
    assert upright.size == (20, 40)  # turned a quarter: what a viewer shows
    red, blue = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert red[0] > 200 > red[2] and blue[2] > 200 > blue[0]  # the red half is now on top
    assert upright.tobytes() == transformers_load_image(str(sideways_photo)).tobytes()


@pytest.fixture
def server(tmp_path):
    Image.new("RGB", (8, 6), "green").save(tmp_path / "green.png")
    (tmp_path / "page.html").write_text("<html>not an image</html>")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_urls_load_and_fail_with_the_reason(server):
    image = open_image(f"{server}/green.png")
    assert image.size == (8, 6) and image.getpixel((0, 0)) == (0, 128, 0)
    with pytest.raises(
        DatasetError, match=r"/missing.png: cannot download the image \(HTTP 404 File not found\); check"
    ):
        open_image(f"{server}/missing.png")
    with pytest.raises(DatasetError, match=r"/page.html: cannot decode image \(not an image\)"):
        open_image(f"{server}/page.html")
    with pytest.raises(DatasetError, match=r"cannot download the image \(.*refused.*\); check the URL and the network"):
        open_image("http://127.0.0.1:9/offline.png")


def test_paths_fail_with_what_is_wrong(tmp_path):
    (tmp_path / "notes.png").write_text("text")
    with pytest.raises(DatasetError, match=r"gone.png: image file not found\.$"):
        open_image(str(tmp_path / "gone.png"))
    with pytest.raises(DatasetError, match=r"is a directory, not an image file"):
        open_image(str(tmp_path))
    with pytest.raises(DatasetError, match=r"notes.png: cannot decode image \(not an image\); replace or remove"):
        open_image(str(tmp_path / "notes.png"))


def test_augmentation_runs_on_each_image_before_the_processor():
    """A training-time ``augment`` (BLIP-2's crop and flip) is applied per image, then the processor as usual."""
    processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    image = Image.linear_gradient("L").convert("RGB").resize((96, 64))
    augment = RandomResizedCropFlip(size=32, flip_probability=1.0)
    torch.manual_seed(0)
    augmented = ImageTransform(processor, "resize", augment)([image, image])
    torch.manual_seed(0)
    expected = processor([augment(image), augment(image)], return_tensors="pt")["pixel_values"]
    assert torch.equal(augmented, expected)
    plain = ImageTransform(processor, "resize")([image])
    assert augmented.shape == (2, 3, 32, 32) and not torch.equal(augmented[0], plain[0])
