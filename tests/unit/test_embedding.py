"""The embedder shared by threads: the embedding replica counts tokens on one thread while it
embeds on another (services/embedding/server.py), and the retriever in process may do the same."""

from __future__ import annotations

import threading

import numpy as np


def test_counting_while_embedding_on_another_thread_never_breaks_a_batch(embedder):
    # Texts of different lengths: a batch only embeds when the tokenizer pads it. Counting sets the
    # shared tokenizer to no padding; without the embedder's lock about a third of these batches
    # failed ("Unable to create tensor", seen in CI as a chat's INTERNAL error).
    texts = ["short", "a much longer text with many more words in it than the first one " * 3] * 8
    expected = embedder.embed(texts)
    stop, errors = threading.Event(), []

    def count() -> None:
        while not stop.is_set():
            try:
                assert embedder.count_tokens(["word " * 300, "one"]) == [300, 1]
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))

    counter = threading.Thread(target=count)
    counter.start()
    try:
        for _ in range(40):
            try:
                np.testing.assert_allclose(embedder.embed(texts), expected, atol=1e-5)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc)[:200])
    finally:
        stop.set()
        counter.join()
    assert not errors, errors[:3]
