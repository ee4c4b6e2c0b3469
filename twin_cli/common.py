"""What every `twin` command shares: the settings from the group, failing with a clear line,
progress bars."""

from __future__ import annotations

import logging
import os
import sys

import click

from llm_twin.config import Settings


def settings_of(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def bar(label: str, total: int, unit: str = "item"):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, disable=None, leave=False)


class StageBars:
    """One progress bar per stage, for the `progress(stage, done, total)` callbacks of long work."""

    def __init__(self):
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        current = self.bars.get(stage) or self.bars.setdefault(stage, bar(stage, total))
        current.update(done - current.n)

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc) -> None:
        for current in self.bars.values():
            current.close()


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("pymilvus", "milvus_lite", "sentence_transformers", "transformers", "httpx", "trafilatura"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - only cosmetics
        pass
