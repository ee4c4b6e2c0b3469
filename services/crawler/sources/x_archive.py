"""An X (Twitter) archive: the author's own tweets and threads from ``data/tweets.js``.

``data/account.js`` names the owner (``accountId``). Kept: the owner's tweets, a thread (the owner
replying to themself) joined in order as one document. Left out: retweets (``RT @...``), replies to
other people (someone else's conversation), likes and everything else in the archive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath

from llm_twin.documents import RawDocument

from ..errors import ParseError
from .archive import ArchiveSource, BoundedZip, zip_names
from .base import Item

WHAT = "X's archive zip (Settings -> Download an archive of your data)"
_ASSIGNMENT = re.compile(r"^\s*window\.YTD\.[\w.]+\s*=\s*", re.ASCII)
_LINK = re.compile(r"https://t\.co/\w+")


def _js_json(data: bytes, where: str):
    """``window.YTD.tweets.part0 = [...]`` -> the list."""
    text = data.decode("utf-8-sig", errors="replace")
    match = _ASSIGNMENT.match(text)
    if not match:
        raise ParseError(where, "does not start with window.YTD....: not a file of X's archive")
    try:
        return json.loads(text[match.end():])
    except json.JSONDecodeError as exc:
        raise ParseError(where, f"its JSON does not parse ({exc.msg} at line {exc.lineno})") from None


def _date(created_at: str) -> str | None:
    try:
        return datetime.strptime(created_at, "%a %b %d %H:%M:%S %z %Y").isoformat()
    except (TypeError, ValueError):
        return None


class XArchiveSource(ArchiveSource):
    name = "x-archive"
    summary = "an X (Twitter) archive zip: the author's tweets and threads (retweets, replies to others left out)"

    @classmethod
    def claims(cls, target: str, path: Path | None) -> bool:
        return any(PurePosixPath(n).name in ("tweets.js", "tweet.js") for n in zip_names(path))

    def crawl(self, target: str, author: str) -> Iterator[Item]:
        with BoundedZip(target, self.max_bytes, WHAT) as archive:
            names = archive.names()
            # tweets.js (tweet.js in archives before 2022), split into -partN files past a size
            files = sorted(n for n in names if re.fullmatch(r"tweets?(-part\d+)?\.js", PurePosixPath(n).name))
            if not files:
                raise ParseError(target, f"the zip has no data/tweets.js: not {WHAT}")
            owner = self._owner(archive, names)
            tweets = {}
            for name in files:
                for entry in _js_json(archive.read(name), f"{archive.name}#{name}"):
                    tweet = entry.get("tweet", entry) if isinstance(entry, dict) else None
                    if isinstance(tweet, dict) and tweet.get("id_str"):
                        tweets[tweet["id_str"]] = tweet
        yield from self._documents(tweets, owner, author)

    @staticmethod
    def _owner(archive: BoundedZip, names: list[str]) -> str | None:
        account = [n for n in names if PurePosixPath(n).name == "account.js"]
        if not account:
            return None
        entries = _js_json(archive.read(account[0]), f"{archive.name}#{account[0]}")
        try:
            return str(entries[0]["account"]["accountId"])
        except (IndexError, KeyError, TypeError):
            return None

    @staticmethod
    def _documents(tweets: dict, owner: str | None, author: str) -> Iterator[Item]:
        def own_reply(t) -> bool:  # part of a thread: the owner answering their own tweet
            parent = t.get("in_reply_to_status_id_str")
            return bool(parent) and parent in tweets and (owner is None or t.get("in_reply_to_user_id_str") == owner)

        kept = {i: t for i, t in tweets.items() if not (t.get("full_text") or "").startswith("RT @")
                and (not t.get("in_reply_to_status_id_str") or own_reply(t))}
        children: dict[str, list[str]] = {}
        for i, t in kept.items():
            if t.get("in_reply_to_status_id_str") in kept:
                children.setdefault(t["in_reply_to_status_id_str"], []).append(i)
        for i, t in sorted(kept.items(), key=lambda item: int(item[0])):
            if t.get("in_reply_to_status_id_str") in kept:
                continue  # inside a thread: joined with its first tweet
            thread, at = [t], i
            while children.get(at):
                at = min(children[at], key=int)  # the owner's first reply continues the thread
                thread.append(kept[at])
            text = "\n\n".join(_LINK.sub("", x.get("full_text") or "").strip() for x in thread).strip()
            if not text:
                continue
            link = f"https://x.com/i/web/status/{i}"
            yield RawDocument.create(author=author, category="thread" if len(thread) > 1 else "post", source=link,
                                     link=link, title=text.splitlines()[0][:80], text=text,
                                     published=_date(t.get("created_at")), platform="x.com")
