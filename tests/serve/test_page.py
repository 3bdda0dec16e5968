"""The chat page of ``vltool serve`` (vltool/serve/static/index.html) in a real headless Chromium.

Against the real server with the tiny random model: two turns with an image give the API's greedy
answers for the same history; Stop keeps the start of the greedy answer and nothing after; the key
dialog (cancel, wrong key, right key, kept for the tab) and a server 400 show as they should. Against a
stand-in OpenAI-compatible server (a few lines of ``http.server`` serving the same page file and
streaming scripted answers, since a random model writes no boxes): grounding boxes are drawn where
``vltool.infer.grounding`` puts them (screenshot in the test's tmp_path), the whole history goes out
each turn, a mid-stream error shows, New chat starts over, bad settings are caught, and dropped and
pasted images are attached.
"""

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.serving import Server, served
from vltool.infer.grounding import PALETTE, parse_boxes

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(
        "the page tests need Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
        allow_module_level=True,
    )

KEY = "page-test-key"
MODEL = "tiny-vlm"
WAIT_S = 90


@pytest.fixture(scope="module")
def server(chat_model) -> Iterator[Server]:
    with served(chat_model, "--api-key", KEY, "--served-model-name", MODEL, "--max-images", "1") as running:
        yield running


@pytest.fixture
def browser(tmp_path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


@pytest.fixture
def picture(tmp_path) -> Path:
    """A 200x120 PNG with four coloured quadrants (not square, so x and y scale differently)."""
    image = Image.new("RGB", (200, 120), "white")
    for index, colour in enumerate(("red", "green", "blue", "yellow")):
        image.paste(Image.new("RGB", (100, 60), colour), (100 * (index % 2), 60 * (index // 2)))
    path = tmp_path / "quadrants.png"
    image.save(path)
    return path


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# ---- driving the page


def wait(driver: WebDriver, condition, seconds: float = WAIT_S):
    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def messages(driver: WebDriver, role: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f"#messages .message[data-role='{role}']")


def text_of(message: WebElement) -> str:
    # textContent is the exact string; .text would be the rendered, whitespace-normalised one
    return message.find_element(By.CSS_SELECTOR, ".content").get_property("textContent")


def dialog_open(driver: WebDriver) -> bool:
    return by_id(driver, "api-key-dialog").get_property("open")


def give_key(driver: WebDriver, key: str) -> None:
    wait(driver, dialog_open)
    by_id(driver, "api-key").send_keys(key)
    by_id(driver, "api-key-save").click()


def open_with_key(driver: WebDriver, server: Server) -> None:
    driver.get(server.url)
    give_key(driver, KEY)
    wait(driver, lambda d: by_id(d, "model-name").text == MODEL)


def set_options(driver: WebDriver, temperature: str, max_tokens: str) -> None:
    if not by_id(driver, "settings").get_property("open"):
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
    for element_id, value in (("temperature", temperature), ("max-tokens", max_tokens)):
        by_id(driver, element_id).clear()
        by_id(driver, element_id).send_keys(value)


def attach(driver: WebDriver, *paths: Path) -> None:
    before = len(driver.find_elements(By.CSS_SELECTOR, "#attachments .attachment"))
    by_id(driver, "image-input").send_keys("\n".join(str(path) for path in paths))
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attachments .attachment")) == before + len(paths))


def submit(driver: WebDriver, text: str) -> None:
    by_id(driver, "prompt").send_keys(text)
    by_id(driver, "send").click()


def ask(driver: WebDriver, text: str) -> WebElement:
    """Send a message and wait until its answer has finished streaming; the answer's element."""
    count = len(messages(driver, "assistant"))
    submit(driver, text)
    wait(driver, lambda d: len(messages(d, "assistant")) == count + 1)
    answer = messages(driver, "assistant")[-1]
    wait(driver, lambda _: answer.get_attribute("data-state") != "streaming")
    return answer


def api_answer(server: Server, messages: list[dict], max_tokens: int) -> dict:
    """The server's greedy answer to this history, asked without the page (not streamed)."""
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
    response = httpx.post(
        f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=WAIT_S
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


# ---- the real server


def test_two_turns_with_an_image_give_the_api_answers(browser, server, picture):
    open_with_key(browser, server)
    set_options(browser, "0", "12")
    attach(browser, picture)
    first = ask(browser, "What is in the picture?")
    second = ask(browser, "And which colours?")
    assert first.get_attribute("data-state") == second.get_attribute("data-state") == "done"

    # the page shows the file it sends, byte for byte
    (thumb,) = messages(browser, "user")[0].find_elements(By.CSS_SELECTOR, "img.thumb")
    assert thumb.get_attribute("src") == data_url(picture)
    history = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(picture)}},
                {"type": "text", "text": "What is in the picture?"},
            ],
        }
    ]
    expected_first = api_answer(server, history, 12)["message"]["content"]
    assert expected_first.strip(), "the tiny model answered blank; the comparison would prove nothing"
    assert text_of(first) == expected_first
    history += [{"role": "assistant", "content": expected_first}, {"role": "user", "content": "And which colours?"}]
    expected_second = api_answer(server, history, 12)
    assert text_of(second) == expected_second["message"]["content"]
    assert second.get_attribute("data-finish") == expected_second["finish_reason"]
    # the usage chunk reached the page
    assert "tokens in" in second.find_element(By.CSS_SELECTOR, ".meta").text


def test_stop_keeps_the_start_of_the_answer(browser, server):
    # 500 tokens take half a minute on a CPU; Stop lands a few tokens in
    open_with_key(browser, server)
    set_options(browser, "0", "500")
    submit(browser, "Write a very long story.")
    wait(browser, lambda d: messages(d, "assistant") and text_of(messages(d, "assistant")[-1]))
    by_id(browser, "stop").click()
    answer = messages(browser, "assistant")[-1]
    wait(browser, lambda _: answer.get_attribute("data-state") != "streaming")
    assert answer.get_attribute("data-state") == "stopped", "the answer ended before Stop took effect"
    assert "stopped" in answer.find_element(By.CSS_SELECTOR, ".meta").text
    partial = text_of(answer)
    time.sleep(0.3)
    assert text_of(answer) == partial, "text kept arriving after Stop"
    assert by_id(browser, "send").is_enabled() and not by_id(browser, "stop").is_enabled()

    # what was shown is the start of the greedy answer (its first 60 tokens, or all of them if Stop came later)
    start = api_answer(server, [{"role": "user", "content": "Write a very long story."}], 60)["message"]["content"]
    shared = min(len(partial), len(start))
    assert shared > 0 and partial[:shared] == start[:shared]


def test_key_dialog_and_server_errors_show(browser, server, picture, tmp_path):
    refusal = httpx.get(f"{server}/v1/models").json()["error"]["message"]
    browser.get(server.url)
    wait(browser, dialog_open)
    assert by_id(browser, "api-key-reason").text == f"401: {refusal}"
    by_id(browser, "api-key-cancel").click()
    wait(browser, lambda d: messages(d, "error"))
    assert messages(browser, "error")[-1].text.endswith(f"Cannot load the model list: 401: {refusal}")
    assert by_id(browser, "model-name").text == "unavailable"

    # Send asks again; a wrong key is refused and asked for once more
    second = tmp_path / "second.png"
    Image.new("RGB", (40, 30), "purple").save(second)
    attach(browser, picture, second)
    submit(browser, "Compare them.")
    give_key(browser, "wrong-key")
    # the dialog closes and opens again at once, with the field emptied
    wait(browser, lambda d: dialog_open(d) and by_id(d, "api-key").get_property("value") == "")
    give_key(browser, KEY)
    wait(browser, lambda d: by_id(d, "model-name").text == MODEL)

    # two images where the server takes one: the server's 400 shows and the message comes back
    two_images = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(picture)}},
                {"type": "image_url", "image_url": {"url": data_url(second)}},
                {"type": "text", "text": "Compare them."},
            ],
        }
    ]
    refused = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": MODEL, "messages": two_images},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert refused.status_code == 400
    wait(browser, lambda d: len(messages(d, "error")) == 2)
    assert messages(browser, "error")[-1].find_element(By.CSS_SELECTOR, ".content").text == (
        f"400: {refused.json()['error']['message']}"
    )
    assert messages(browser, "user")[-1].get_attribute("data-state") == "unsent"
    assert by_id(browser, "prompt").get_property("value") == "Compare them."
    assert len(browser.find_elements(By.CSS_SELECTOR, "#attachments .attachment")) == 2

    # removing one image makes the same message go through
    browser.find_elements(By.CSS_SELECTOR, "#attachments .attachment button")[1].click()
    set_options(browser, "0", "3")
    by_id(browser, "send").click()
    wait(browser, lambda d: messages(d, "assistant"))
    answer = messages(browser, "assistant")[-1]
    wait(browser, lambda _: answer.get_attribute("data-state") == "done")
    assert not dialog_open(browser)

    # the key lasts as long as the tab: a reload does not ask again
    browser.refresh()
    wait(browser, lambda d: by_id(d, "model-name").text == MODEL)
    assert not dialog_open(browser)


# ---- a stand-in server with scripted answers

BOX_ANSWER = (
    "The dog <ref>dog</ref><box>(100,200),(400,900)</box> and two cats "
    "<ref>cat</ref> <box>(700,100),(550,300)</box><box>(800,0),(1000,1000)</box>; "
    "not a box: <box>(1,2),(3000,4)</box>, an unlabelled one <box>(0,0),(250,250)</box>."
)
PARTIAL_ANSWER = "I was saying"
FAILURE = "the engine failed: out of memory"


class StandIn(BaseHTTPRequestHandler):
    """Serves the packaged page, one model, and scripted streamed answers; records the request bodies."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no chunked encoding to write
    requests: list[dict] = []

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (keep pytest's output clean)
        pass

    def do_GET(self) -> None:
        if self.path == "/":
            page = resources.files("vltool.serve").joinpath("static/index.html").read_bytes()
            self._reply(200, "text/html; charset=utf-8", page)
        elif self.path == "/v1/models":
            self._reply(200, "application/json", json.dumps({"object": "list", "data": [{"id": "stand-in"}]}).encode())
        else:
            self._reply(404, "application/json", b'{"error": {"message": "no such page"}}')

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        last = body["messages"][-1]["content"]
        failing = isinstance(last, str) and "fail" in last
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        answer = PARTIAL_ANSWER if failing else BOX_ANSWER
        for start in range(0, len(answer), 7):  # pieces that cut through the tags
            self._event(
                {"object": "chat.completion.chunk", "choices": [{"delta": {"content": answer[start : start + 7]}}]}
            )
            time.sleep(0.005)
        if failing:
            self._event({"error": {"message": FAILURE, "type": "server_error", "param": None, "code": None}})
        else:
            self._event({"object": "chat.completion.chunk", "choices": [{"delta": {}, "finish_reason": "stop"}]})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, payload: dict) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def stand_in() -> Iterator[tuple[str, list[dict]]]:
    handler = type("RecordingStandIn", (StandIn,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def test_boxes_are_drawn_over_the_image(browser, stand_in, picture, tmp_path):
    url, requests = stand_in
    browser.set_window_size(390, 844)  # a phone: the layout must fit and the boxes follow the scaled image
    browser.get(url)
    wait(browser, lambda d: by_id(d, "model-name").text == "stand-in")
    attach(browser, picture)
    answer = ask(browser, "Where are the animals?")
    assert text_of(answer) == BOX_ANSWER
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

    figure = answer.find_element(By.CSS_SELECTOR, "figure.grounding")
    assert (figure.get_attribute("data-width"), figure.get_attribute("data-height")) == ("200", "120")
    drawn = figure.find_elements(By.CSS_SELECTOR, ".box")
    expected = parse_boxes(BOX_ANSWER)
    assert len(drawn) == len(expected) == 4
    image = figure.find_element(By.CSS_SELECTOR, "img")
    frame = image.rect
    assert frame["width"] < 390  # shown scaled to the narrow column
    for element, box in zip(drawn, expected, strict=True):
        assert element.get_attribute("data-label") == box.label
        corners = tuple(int(element.get_attribute(f"data-{name}")) for name in ("x1", "y1", "x2", "y2"))
        assert corners == box.to_pixels(200, 120)
        assert element.get_attribute("data-grid") == f"{box.x1},{box.y1},{box.x2},{box.y2}"
        rect = element.rect
        assert rect["x"] == pytest.approx(frame["x"] + box.x1 / 1000 * frame["width"], abs=1)
        assert rect["y"] == pytest.approx(frame["y"] + box.y1 / 1000 * frame["height"], abs=1)
        assert rect["width"] == pytest.approx((box.x2 - box.x1) / 1000 * frame["width"], abs=1)
        assert rect["height"] == pytest.approx((box.y2 - box.y1) / 1000 * frame["height"], abs=1)
    tags = [element.find_elements(By.CSS_SELECTOR, ".tag") for element in drawn]
    assert [tag[0].text if tag else "" for tag in tags] == ["dog", "cat", "cat", ""]
    assert "dog [20, 24, 80, 108]" in figure.find_element(By.CSS_SELECTOR, "figcaption").text

    # the page's parser keeps and labels exactly the boxes vltool's does, on the awkward cases too
    cases = [
        "<ref> spaced label </ref>\n<box>( 10 , 20 ),( 30 , 40 )</box> <box>(5,5),(6,6)</box>",
        "<box>(1000,1000),(0,0)</box><box>(1001,0),(5,5)</box><box>(-1,2),(3,4)</box><box>(1.5,2),(3,4)</box>",
        "<box>(1,2),(3,4),(5,6)</box><box> (0001,2) , (3,0004) </box><box>bad</box>",
        "<ref>a</ref>text<box>(1,2),(3,4)</box> <ref>x</ref><ref>y</ref><box>(1,2),(3,4)</box>",
        "<ref>a</ref><box>(1,2),(3,4)</box>, <box>(5,6),(7,8)</box><ref>a<b</ref><box>(9,9),(8,8)</box>",
    ]
    in_page = browser.execute_script("return arguments[0].map(parseBoxes)", cases)
    for text, boxes in zip(cases, in_page, strict=True):
        assert [(b["label"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in boxes] == [
            (b.label, b.x1, b.y1, b.x2, b.y2) for b in parse_boxes(text)
        ], text

    # what a user sees: each box's left edge in its label's colour, the same colour for both cats
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", figure)  # clear of the message box
    browser.save_screenshot(str(tmp_path / "page.png"))
    screenshot = tmp_path / "grounding.png"
    figure.screenshot(str(screenshot))
    shot = Image.open(io.BytesIO(screenshot.read_bytes())).convert("RGB")
    origin = figure.rect
    edge_colours = []
    for element in drawn[:3]:
        rect = element.rect
        # the middle of the 2-pixel border, wherever the browser snaps a fractional position
        point = (int(rect["x"] - origin["x"] + 1), int(rect["y"] - origin["y"] + rect["height"] / 2))
        edge_colours.append(shot.getpixel(point))
    for colour, palette in zip(edge_colours, (PALETTE[0], PALETTE[1], PALETTE[1]), strict=True):
        assert max(abs(a - b) for a, b in zip(colour, palette, strict=True)) <= 12, (colour, palette)


def test_history_goes_out_whole_and_errors_mid_stream_show(browser, stand_in, picture):
    url, requests = stand_in
    browser.get(url)
    wait(browser, lambda d: by_id(d, "model-name").text == "stand-in")
    by_id(browser, "settings").find_element(By.CSS_SELECTOR, "summary").click()
    by_id(browser, "system-prompt").send_keys("Answer briefly.")
    attach(browser, picture)
    ask(browser, "Where are the animals?")
    failed = ask(browser, "Please fail now.")

    assert text_of(failed) == PARTIAL_ANSWER
    assert failed.get_attribute("data-state") == "error"
    assert messages(browser, "error")[-1].find_element(By.CSS_SELECTOR, ".content").text == FAILURE
    first, second = requests
    assert first["model"] == "stand-in" and first["stream"] is True
    assert "temperature" not in first and "max_tokens" not in first  # blank settings leave the server's defaults
    assert second["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(picture)}},
                {"type": "text", "text": "Where are the animals?"},
            ],
        },
        {"role": "assistant", "content": BOX_ANSWER},
        {"role": "user", "content": "Please fail now."},
    ]

    # New chat: an empty page, and the next request carries only the new message; without an image, no figure
    by_id(browser, "new-chat").click()
    assert messages(browser, "user") == [] and messages(browser, "assistant") == []
    by_id(browser, "system-prompt").clear()
    answer = ask(browser, "Boxes without a picture?")
    assert requests[-1]["messages"] == [{"role": "user", "content": "Boxes without a picture?"}]
    assert answer.find_elements(By.CSS_SELECTOR, "figure.grounding") == []
    assert "no image to place them on" in answer.find_element(By.CSS_SELECTOR, ".meta").text

    # a setting the server would refuse is caught on the page: nothing is sent, the message stays
    by_id(browser, "max-tokens").send_keys("0")
    submit(browser, "Too few tokens?")
    wait(browser, lambda d: messages(d, "notice"))
    assert "Max tokens must be a whole number of at least 1." in messages(browser, "notice")[-1].text
    assert len(requests) == 3
    assert by_id(browser, "prompt").get_property("value") == "Too few tokens?"


def test_dropped_and_pasted_images_are_attached(browser, stand_in, picture):
    url, requests = stand_in
    browser.get(url)
    wait(browser, lambda d: by_id(d, "model-name").text == "stand-in")
    # a file dropped on the page and one pasted into the message box, as the browser delivers them
    browser.execute_script(
        """
        const [encoded, name] = arguments;
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const carrying = (...files) => {
            const transfer = new DataTransfer();
            files.forEach((file) => transfer.items.add(file));
            return transfer;
        };
        const png = new File([bytes], name, {type: "image/png"});
        const text = new File(["hello"], "notes.txt", {type: "text/plain"});
        const drop = {dataTransfer: carrying(png, text), bubbles: true, cancelable: true};
        document.body.dispatchEvent(new DragEvent("drop", drop));
        const paste = {clipboardData: carrying(png), bubbles: true, cancelable: true};
        document.getElementById("prompt").dispatchEvent(new ClipboardEvent("paste", paste));
        """,
        base64.b64encode(picture.read_bytes()).decode(),
        picture.name,
    )
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attachments .attachment")) == 2)
    assert messages(browser, "notice")[-1].text.endswith("notes.txt is not an image; only images can be attached.")
    ask(browser, "Two of the same?")
    sent = requests[-1]["messages"][-1]["content"]
    assert sent == [{"type": "image_url", "image_url": {"url": data_url(picture)}}] * 2 + [
        {"type": "text", "text": "Two of the same?"}
    ]
    assert len(messages(browser, "user")[-1].find_elements(By.CSS_SELECTOR, "img.thumb")) == 2
