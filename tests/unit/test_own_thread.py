"""in_own_thread: heavy torch work in a thread that ends with it (see its docstring for why)."""

import threading

import pytest

from llm_twin.config import in_own_thread


def test_returns_the_result_from_another_thread_that_has_ended():
    seen = {}

    def work(a, b=0):
        seen["thread"] = threading.current_thread()
        return a + b

    assert in_own_thread(work, 2, b=3) == 5
    assert seen["thread"] is not threading.current_thread() and not seen["thread"].is_alive()


def test_reraises_the_error_in_the_caller():
    def fails():
        raise OSError("no such model")

    with pytest.raises(OSError, match="no such model"):
        in_own_thread(fails)
