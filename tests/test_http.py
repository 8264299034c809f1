"""The HTTP API and the web page, on the real stack (the HTTP service is a Kafka and S3 client);
the page is driven in headless Chromium (Debian's chromium + chromium-driver, `make browser`)."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from minio import Minio
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lookalike.samples import distinct_jpegs, jpeg
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import SearchRequest
from schemas.settings import Settings
from tests.kafka_helpers import eventually
from tests.test_convergence import all_indexed


def post_form(url: str, fields: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        )
        body.write(value.encode() + b"\r\n")
    for name, data in files.items():
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
        )
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        url,
        data=body.getvalue(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


async def in_clip_index(settings: Settings, image_id: str) -> None:
    async with SearchClient(settings) as client:
        await eventually(
            lambda: client.search(SearchRequest(feature="clip", image_id=image_id)),
            lambda reply: reply.ok,
        )


@pytest.fixture(scope="module")
def indexed_pair(stack: Stack) -> tuple[str, bytes]:
    """An original in the bucket and a smaller copy of it (the query), both indexed."""
    settings = stack.settings
    s3 = Minio(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, secure=False)
    original = distinct_jpegs(1, size=(320, 240), seed=61)[0]
    key = f"http-{uuid.uuid4().hex[:6]}/original.jpg"
    upload_bytes(s3, settings.bucket, key, original)
    image_id = f"{settings.bucket}/{key}"
    asyncio.run(all_indexed(settings, [image_id]))
    asyncio.run(in_clip_index(settings, image_id))  # the last feature to arrive
    copy = jpeg(Image.open(io.BytesIO(original)).resize((240, 180)))
    return image_id, copy


def test_the_api_answers_a_fused_search_with_verdicts_and_thumbnails(
    stack: Stack, indexed_pair: tuple[str, bytes]
) -> None:
    image_id, copy = indexed_pair
    answer = post_form(stack.http_url + "api/search", {"k": "5"}, {"image": copy})
    assert answer["feature"] == "all"
    first = answer["hits"][0]
    assert first["image_id"] == image_id and first["verdict"] == "copy"
    assert set(first["distances"]) == {"phash", "colour", "copy", "keypoints", "clip"}
    with urllib.request.urlopen(first["url"], timeout=10) as thumbnail:  # presigned S3 GET
        assert Image.open(io.BytesIO(thumbnail.read())).size == (320, 240)
    similar = get_json(stack.http_url + f"api/images/{image_id}/similar?k=3")
    assert image_id not in [h["image_id"] for h in similar["hits"]]
    env = (stack.data_dir / "stack.env").read_text()
    assert f"LOOKALIKE_HTTP_URL={stack.http_url}" in env


def test_an_unknown_image_id_is_a_404(stack: Stack) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_json(stack.http_url + "api/images/images/none.jpg/similar")
    assert refused.value.code == 404


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_a_result_grid_for_a_dropped_image(
    stack: Stack, indexed_pair: tuple[str, bytes], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    image_id, copy = indexed_pair
    query = tmp_path / "query.jpg"
    query.write_bytes(copy)
    browser.get(stack.http_url)
    browser.find_element(By.ID, "file").send_keys(str(query))
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".hit img"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".hit")
    assert image_id in cards[0].text and "copy" in cards[0].text
    WebDriverWait(browser, 20).until(
        lambda b: b.execute_script(
            "return [...document.querySelectorAll('.hit img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    grid = browser.find_element(By.ID, "results").rect
    region = pixels[
        int(grid["y"]) : int(grid["y"] + grid["height"]),
        int(grid["x"]) : int(grid["x"] + grid["width"]),
    ]
    assert region.size and region.std() > 20  # thumbnails drawn, not a blank area


def test_the_page_lists_an_alert_as_an_upload_arrives(
    stack: Stack, settings: Settings, s3: Minio, browser: webdriver.Chrome
) -> None:
    browser.get(stack.http_url)
    key = f"http-{uuid.uuid4().hex[:6]}/live.jpg"
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "alerts"))
    upload_bytes(s3, settings.bucket, key, distinct_jpegs(1, size=(160, 120), seed=62)[0])
    WebDriverWait(browser, 90).until(lambda b: key in b.find_element(By.ID, "alerts").text)


def test_thumbnail_links_use_the_endpoint_browsers_reach() -> None:
    from lookalike.s3 import public_s3_client

    inside = Settings(_env_file=None, s3_endpoint="minio:9000", s3_public_endpoint="localhost:9000")
    url = public_s3_client(inside).presigned_get_object("images", "a/b.jpg")
    assert url.startswith("http://localhost:9000/images/a/b.jpg?")
    plain = Settings(_env_file=None, s3_endpoint="minio:9000")
    assert (
        public_s3_client(plain)
        .presigned_get_object("images", "c.jpg")
        .startswith("http://minio:9000/")
    )
