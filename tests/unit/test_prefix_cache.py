"""The prefix cache: whole blocks of an identical prefix, per adapter, least recently used out first."""

from services.generation.engines.transformers.prefix_cache import PrefixCache


def reader(log: list):
    def read(start, end):
        log.append((start, end))
        return f"kv[{start}:{end}]"
    return read


def test_only_whole_blocks_of_an_identical_prefix_come_back():
    cache, reads = PrefixCache(capacity_tokens=64, block=4), []
    prompt = list(range(10))
    cache.store("twin", prompt, reader(reads))
    assert reads == [(0, 4), (4, 8)]  # the last, partial block is not kept
    assert cache.lookup("twin", prompt, limit=9) == ["kv[0:4]", "kv[4:8]"]
    assert cache.lookup("twin", prompt, limit=7) == ["kv[0:4]"]  # never past the limit
    assert cache.lookup("twin", [0, 1, 2, 3, 4, 5, 99, 7, 8], limit=8) == ["kv[0:4]"]  # differs in block 2
    assert cache.lookup("twin", [9, 1, 2, 3, 4, 5, 6, 7, 8], limit=8) == []  # a later block needs its whole past
    assert cache.lookup("other-twin", prompt, limit=9) == []  # another adapter's keys and values differ
    assert cache.lookup(None, prompt, limit=9) == []


def test_storing_again_reads_nothing_and_the_oldest_blocks_go_first():
    cache, reads = PrefixCache(capacity_tokens=12, block=4), []
    cache.store(None, [1, 2, 3, 4, 5, 6, 7, 8], reader(reads))
    cache.store(None, [1, 2, 3, 4, 5, 6, 7, 8, 9], reader(reads))
    assert reads == [(0, 4), (4, 8)] and len(cache) == 8
    cache.store(None, [7, 7, 7, 7, 8, 8, 8, 8], reader(reads))  # 4 blocks > capacity 3: the oldest goes
    assert len(cache) == 12
    assert cache.lookup(None, [1, 2, 3, 4, 5, 6, 7, 8], limit=8) == []
    assert cache.lookup(None, [7, 7, 7, 7, 8, 8, 8, 8], limit=8) == ["kv[0:4]", "kv[4:8]"]


def test_dropping_an_adapter_forgets_its_blocks_and_zero_capacity_keeps_nothing():
    cache = PrefixCache(capacity_tokens=64, block=4)
    cache.store("a", [1, 2, 3, 4], reader([]))
    cache.store("b", [1, 2, 3, 4], reader([]))
    cache.drop("a")
    assert cache.lookup("a", [1, 2, 3, 4, 5], limit=4) == [] and cache.lookup("b", [1, 2, 3, 4, 5], limit=4)
    off, reads = PrefixCache(capacity_tokens=0), []
    off.store(None, list(range(64)), reader(reads))
    assert reads == [] and off.lookup(None, list(range(64)), limit=63) == []
