"""The crawler deployment: crawl a twin's sources into the warehouse, then ask retrieval to index."""

from __future__ import annotations

import asyncio
import threading

from ray import serve

from llm_twin.config import Settings
from llm_twin.telemetry import span

from .core import SOURCE_TYPES, Crawler
from .errors import InvalidTarget

MAX_TARGETS = 100


@serve.deployment(name="Crawler", ray_actor_options={"num_cpus": 0})
class CrawlerDeployment:
    def __init__(self, settings: dict, retrieval):
        self.settings = Settings(**settings)
        self.retrieval = retrieval
        self.crawler = Crawler.from_settings(self.settings)

    async def crawl(self, twin: str, targets: list[str], source_type: str = "auto", index: bool = False,
                    exact_twin: bool = False) -> dict:
        """``exact_twin`` (the API): an existing twin may only be added to under its exact name."""
        if not (twin or "").strip():
            raise InvalidTarget("twin", "name the author whose writing this is")
        if not targets:
            raise InvalidTarget("targets", "give at least one URL or path to crawl")
        if len(targets) > MAX_TARGETS:
            raise InvalidTarget("targets", f"{len(targets)} targets; the limit is {MAX_TARGETS} per request")
        source_type = source_type or "auto"
        if source_type not in SOURCE_TYPES:
            raise InvalidTarget("source_type", f"unknown {source_type!r}; use one of {', '.join(SOURCE_TYPES)}")
        if exact_twin:
            await asyncio.to_thread(self.crawler.check_twin_name, twin)
        with span("crawler.crawl", **{"twin.name": twin, "crawler.targets": len(targets)}):
            stop = threading.Event()
            try:
                report = await asyncio.to_thread(self.crawler.crawl, targets, twin, source_type, stop=stop)
            except asyncio.CancelledError:  # the client went away: the crawl stops at its next page
                stop.set()
                raise
            result = {"outcomes": [o.__dict__ for o in report.outcomes], "chunks_indexed": 0}
            for status in ("stored", "updated", "unchanged", "failed"):
                result[status] = report.count(status)
            if index and report.ok:
                result["chunks_indexed"] = (await self.retrieval.index.remote())["chunks_written"]
        return result
