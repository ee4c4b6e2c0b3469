"""Content decoding with every layer's output counted as it is produced.

httpx decodes `Content-Encoding` itself, but a zlib call without an output bound turns 16 KB of a
doubly gzipped body into gigabytes before a caller's size check sees the first chunk (measured:
378 bytes of `gzip, gzip` grew the crawler by 135 MB). Here the crawler reads the raw bytes and
each layer may produce at most the cap (+1 byte, to tell "at the cap" from "over it"): memory is
bounded by layers x cap whatever the body claims to be.
"""

from __future__ import annotations

import zlib

# What the crawler asks for (Accept-Encoding) and can undo; anything else is refused by name.
ACCEPT_ENCODING = "gzip, deflate"
MAX_LAYERS = 3  # "gzip, gzip" happens (a CDN recompressing); more than three is an attack


class TooLargeBody(Exception):
    """Decoding would produce more than the cap (the message names the layer)."""


class UnsupportedEncoding(Exception):
    """A Content-Encoding the crawler did not ask for (br, zstd, compress, ...)."""


class _Layer:
    """One encoding undone incrementally, its output bounded by ``cap`` bytes in all."""

    def __init__(self, encoding: str, cap: int):
        self.encoding, self.cap, self.produced = encoding, cap, 0
        self._deflate_raw = False
        self._z = self._new()

    def _new(self):
        if self.encoding in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is zlib-wrapped by the standard, raw by some servers: try the standard first.
        return zlib.decompressobj(-zlib.MAX_WBITS if self._deflate_raw else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            try:
                chunk = self._z.decompress(data, self.cap - self.produced + 1)
            except zlib.error as exc:
                if self.encoding == "deflate" and not self._deflate_raw and self.produced == 0:
                    self._deflate_raw = True
                    self._z = self._new()
                    continue
                raise ValueError(f"corrupt {self.encoding} content: {exc}") from None
            self.produced += len(chunk)
            if self.produced > self.cap:
                raise TooLargeBody(f"its {self.encoding} content decodes to more than {self.cap} bytes")
            out += chunk
            if self._z.unconsumed_tail:  # output bounded this call: go on with what is left
                data = self._z.unconsumed_tail
            elif self._z.eof and self._z.unused_data:  # a second gzip member follows (RFC 1952 allows it)
                data, self._z = self._z.unused_data, self._new()
            else:
                data = b""
        return bytes(out)

    def flush(self) -> bytes:
        rest = self._z.flush(self.cap - self.produced + 1)
        self.produced += len(rest)
        if self.produced > self.cap:
            raise TooLargeBody(f"its {self.encoding} content decodes to more than {self.cap} bytes")
        return rest


class BoundedDecoder:
    """Undo a response's Content-Encoding layers (last applied first), no layer past ``cap`` bytes."""

    def __init__(self, content_encoding: str | None, cap: int):
        names = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
        names = [e for e in names if e != "identity"]
        if len(names) > MAX_LAYERS:
            raise UnsupportedEncoding(f"{len(names)} content encodings stacked (at most {MAX_LAYERS})")
        for name in names:
            if name not in ("gzip", "x-gzip", "deflate"):
                raise UnsupportedEncoding(f"content encoding {name!r} (the crawler asks for {ACCEPT_ENCODING})")
        self.cap = cap
        self.layers = [_Layer(name, cap) for name in reversed(names)]
        self.size = 0  # decoded bytes handed out

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.cap:
            raise TooLargeBody(f"it exceeds {self.cap} bytes")
        return data

    def feed(self, raw: bytes) -> bytes:
        for layer in self.layers:
            raw = layer.feed(raw)
        return self._count(raw)

    def flush(self) -> bytes:
        out = b""
        for i, layer in enumerate(self.layers):
            out = layer.feed(out) + layer.flush() if i else layer.flush()
        return self._count(out)
