"""The AsyncAPI document in the repo is the one the code generates: every topic, every message."""

from __future__ import annotations

import json

from lookalike.asyncapi import DOCUMENT, document
from lookalike.topics import topic_plan
from schemas.settings import Settings


def test_the_committed_document_is_current_and_names_every_topic() -> None:
    generated = document()
    assert json.loads(DOCUMENT.read_text()) == json.loads(json.dumps(generated, sort_keys=True))
    assert set(topic_plan(Settings(_env_file=None))) <= set(generated["channels"])
    for channel in generated["channels"].values():
        for ref in channel["messages"].values():
            assert ref["$ref"].split("/")[-1] in generated["components"]["messages"]
