"""`twin`: the LLM Twin command line. One group; the commands live in one module per area."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from llm_twin.config import Settings

from . import data_commands, platform_commands, quality_commands, training_commands
from .common import fail, quiet_libraries


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data folder [env TWIN_DATA_DIR, default ./.twin].")
@click.option("--milvus-uri", help="Milvus Lite file or server URI [env TWIN_MILVUS_URI].")
@click.option("--warehouse-uri", help="fsspec URI of the warehouse, e.g. s3://bucket/wh [env TWIN_WAREHOUSE_URI].")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, data_dir, milvus_uri, warehouse_uri, verbose) -> None:
    """LLM Twin: crawl a person's writing, index it, fine-tune and serve their twin, chat with it."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        settings = Settings().with_overrides(data_dir=data_dir, milvus_uri=milvus_uri, warehouse_uri=warehouse_uri)
    except Exception as exc:  # noqa: BLE001 - pydantic ValidationError or SettingsError: a bad TWIN_* variable
        fail(f"invalid configuration: {exc}")
    ctx.obj = {"settings": settings}


for module in (data_commands, training_commands, platform_commands, quality_commands):
    for command in module.COMMANDS:
        main.add_command(command)
data_commands.eval_group.add_command(quality_commands.eval_rag)

if __name__ == "__main__":
    main()
