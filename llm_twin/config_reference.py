"""docs/configuration.md, generated from the settings (`make crd`; a test fails when it is stale).

Every setting with its nested name, both environment variables, its default and what it does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

from .config import SECTIONS, Settings, env_names, flat_name, leaves
from .engines import ENGINES, section_name

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

INTRO = """# Configuration reference

Generated from `llm_twin/config.py` and the engine table in `llm_twin/engines.py` by `make crd`; do not
edit (a test compares them). Every setting can be set in the environment by its nested name
(`TWIN_<SECTION>__<NAME>`, or a whole section as JSON in `TWIN_<SECTION>`) or by its flat name; the
nested name wins when both are set. A list takes JSON (`["a", "b"]`) or commas (`a,b`); a mapping JSON or
`key=value,key=value`. `twin` flags win over the environment. Options of an engine that is not chosen are
refused, not ignored. On Kubernetes the TwinModel sets these for you (`docs/kubernetes.md`).
"""


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if value in (None, "", [], {}):
        return "unset" if value is None else f"`{value!r}`" if value != "" else "empty"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _table(rows) -> list[str]:
    out = ["| Setting | Environment | Default | What it does |", "|---|---|---|---|"]
    for path, field in rows:
        nested, flat = env_names(path)
        env = f"`{nested}`" + (f"<br>`{flat}`" if flat != nested else "")
        out.append(f"| `{'.'.join(path)}` | {env} | {_default(field)} | {_cell(field.description)} |")
    return out


def render() -> str:
    lines = [INTRO]
    top = [(p, f) for p, f in leaves() if len(p) == 1 and p[0] not in SECTIONS]
    lines += ["## Storage and process", "", *_table(top), ""]
    for name, section in SECTIONS.items():
        doc = " ".join((section.__doc__ or "").split())
        rows = [(p, f) for p, f in leaves() if p[0] == name and (name != "generation" or len(p) == 2)]
        lines += [f"## {name}", "", doc, "", *_table(rows), ""]
        if name == "generation":
            for engine, entry in ENGINES.items():
                sub = section_name(engine)
                rows = [(p, f) for p, f in leaves() if p[:2] == ("generation", sub)]
                lines += [f"### generation.{sub}: the {engine} engine", "", f"{entry.summary}. Used when "
                          f"`generation.engine` is `{engine}`.", "", *_table(rows), ""]
    assert all(flat_name(p, f) for p, f in leaves())
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    DOC_PATH.write_text(render())
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    Settings()  # fails loudly if the environment holds a bad setting
    sys.exit(main(sys.argv[1:]))
