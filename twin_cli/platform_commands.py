"""Running the platform: `twin serve` on this machine, `twin operator` against a cluster."""

from __future__ import annotations

import click

from .common import fail, settings_of


@click.command()
@click.option("--grpc-port", type=int, help="Ray Serve's gRPC proxy port [env TWIN_GRPC_PORT, default 9000].")
@click.option("--http-port", type=int, help="HTTP gateway port [env TWIN_HTTP_PORT, default 8000].")
@click.option("--model", "generation_model", help="Generation model folder or cached hub id "
              "[env TWIN_GENERATION_MODEL; default: the embedded SmolLM2-135M-Instruct].")
@click.option("--quantization", type=click.Choice(["auto", "none", "int8", "bf16"]),
              help="Serving weights [env TWIN_GENERATION_QUANTIZATION, default auto: int8 on a CPU]; see "
                   "docs/serving.md.")
@click.option("--trace-sampling-ratio", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of requests traced (exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set).")
@click.option("--stop", is_flag=True, help="Stop the platform started by `twin serve` for this data folder.")
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Serve everyone without API keys [env TWIN_INSECURE_NO_AUTH]; only behind your own gateway.")
@click.pass_context
def serve(ctx: click.Context, grpc_port, http_port, generation_model, quantization, trace_sampling_ratio, stop,
          insecure_no_auth) -> None:
    """Serve the platform: gRPC (twin.v1) and HTTP (JSON + OpenAI API) over the local index."""
    from . import local_serving

    settings = settings_of(ctx).with_overrides(grpc_port=grpc_port, http_port=http_port,
                                               generation_model=generation_model, insecure_no_auth=insecure_no_auth,
                                               generation_quantization=quantization)
    if stop:
        try:
            stopped = local_serving.stop_running(settings)
        except RuntimeError as exc:
            fail(str(exc))
        click.echo("stopped" if stopped else f"nothing to stop (no `twin serve` for {settings.data_dir})")
        return
    try:
        local_serving.run(settings, trace_sampling_ratio=trace_sampling_ratio)
    except Exception as exc:  # noqa: BLE001 - a clear line beats a Ray traceback
        fail(f"serve failed: {exc}")


@click.command()
@click.option("-n", "--namespace", "namespaces", multiple=True,
              help="Namespace(s) to watch (repeatable; globs allowed).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster.")
@click.option("--standalone", is_flag=True, help="No peering with other operator instances.")
@click.option("--liveness", help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
def operator(namespaces, all_namespaces, standalone, liveness) -> None:
    """Run the TwinModel operator (kopf) against the current kubeconfig or in-cluster account."""
    import asyncio

    import kopf

    import operators.twinmodel.handlers  # noqa: F401  (registers the handlers)

    if not namespaces and not all_namespaces:
        fail("say what to watch: -n NAMESPACE (repeatable) or -A for the whole cluster", 2)
    asyncio.run(kopf.operator(clusterwide=all_namespaces, namespaces=list(namespaces), standalone=standalone,
                              liveness_endpoint=liveness))


@click.group("keys")
def keys_group() -> None:
    """API keys for `twin serve` (chat: chat, generate, search, embed; admin: also crawl and index)."""


def _store(ctx: click.Context):
    from llm_twin.keys import KeyStore

    return KeyStore(settings_of(ctx).resolved_api_keys_file)


@keys_group.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["chat", "admin"]), default="chat", show_default=True)
@click.pass_context
def keys_create(ctx: click.Context, name, scope) -> None:
    """Create a key and print it once (the last line is the key alone); only its hash is stored."""
    from llm_twin.keys import KeyFileError

    store = _store(ctx)
    try:
        key = store.create(name, scope)
    except KeyFileError as exc:
        fail(str(exc), 2)
    click.echo(f"created {scope} key {name!r} in {store.path}; it is shown once, store it now:", err=True)
    click.echo(key)


@keys_group.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    from llm_twin.keys import KeyFileError

    try:
        found = _store(ctx).list()
    except KeyFileError as exc:
        fail(str(exc))
    if not found:
        click.echo("no keys: `twin serve` answers loopback clients only (create one: twin keys create NAME)")
    for k in found:
        click.echo(f"{k['name']}  {k['scope']}  created {k['created']}")


@keys_group.command("revoke")
@click.argument("name")
@click.pass_context
def keys_revoke(ctx: click.Context, name) -> None:
    """Revoke a key; a running server refuses it within seconds."""
    from llm_twin.keys import KeyFileError

    try:
        revoked = _store(ctx).revoke(name)
    except KeyFileError as exc:
        fail(str(exc))
    if not revoked:
        fail(f"no key named {name!r} (see `twin keys list`)")
    click.echo(f"revoked {name!r}")


COMMANDS = [serve, operator, keys_group]
