"""Prompt prefixes prefilled once: the KV of every full block of a prompt, reused by later prompts
that start with the same tokens (the twin's system prompt; in a conversation, the turns and
passages already sent).

A block is keyed by the adapter that computed it and a hash chained over every token up to the
block's end, so a block is only reused after an identical prefix, and never across twins (an
adapter changes the keys and values). Least recently used blocks go first once ``capacity_tokens``
is reached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class PrefixCache:
    def __init__(self, capacity_tokens: int, block: int = 16):
        self.block = block
        self.capacity = max(0, capacity_tokens // block)
        self._blocks: OrderedDict = OrderedDict()  # (adapter, chained hash) -> KV of the block

    def _keys(self, adapter: str | None, ids: list[int], limit: int) -> list:
        keys, chained = [], 0
        for end in range(self.block, min(limit, len(ids)) + 1, self.block):
            chained = hash((chained, tuple(ids[end - self.block:end])))
            keys.append((adapter, chained))
        return keys

    def lookup(self, adapter: str | None, ids: list[int], limit: int) -> list:
        """The cached blocks that start the prompt, in order (at most ``limit`` tokens' worth)."""
        found = []
        for key in self._keys(adapter, ids, limit):
            block = self._blocks.get(key)
            if block is None:
                break
            self._blocks.move_to_end(key)
            found.append(block)
        return found

    def store(self, adapter: str | None, ids: list[int], read: Callable[[int, int], object]) -> None:
        """Keeps the prompt's full blocks not cached yet; ``read(start, end)`` copies their KV."""
        if not self.capacity:
            return
        for index, key in enumerate(self._keys(adapter, ids, len(ids))):
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            self._blocks[key] = read(index * self.block, (index + 1) * self.block)
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)

    def drop(self, adapter: str | None) -> None:
        """Forgets an adapter's blocks (it was unloaded or replaced)."""
        for key in [k for k in self._blocks if k[0] == adapter]:
            del self._blocks[key]

    def __len__(self) -> int:
        return len(self._blocks) * self.block
