"""The committed `twin` package is what `make protos` generates from protos/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools is missing: it is in the [dev] extra (make setup installs it)")
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = gen.generate(tmp_path, ROOT / "protos")
    assert fresh, "no code generated"
    committed = sorted(p for p in (ROOT / "twin").rglob("*") if p.is_file() and p.suffix in (".py", ".pyi"))
    rel = lambda paths, base: {str(p.relative_to(base)) for p in paths}  # noqa: E731
    assert rel(fresh, tmp_path) == rel(committed, ROOT), "generated files differ: run `make protos`"
    stale = [str(p.relative_to(tmp_path)) for p in fresh
             if p.read_bytes() != (ROOT / p.relative_to(tmp_path)).read_bytes()]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_every_rpc_has_a_gateway_method():
    """Ray Serve's proxy routes an RPC to the ingress method of the same name."""
    from services.gateway.dataplane import SERVICES
    from services.gateway.server import Gateway
    from twin.v1 import chat_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2

    rpcs = {m.name for module in (chat_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2)
            for service in module.DESCRIPTOR.services_by_name.values() for m in service.methods}
    services = {s.full_name for module in (chat_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2)
                for s in module.DESCRIPTOR.services_by_name.values()}
    gateway = Gateway.func_or_class
    assert services == set(SERVICES)
    assert {name for name in rpcs if not hasattr(gateway, name)} == set()
