"""Running the platform: `twin serve` on this machine, `twin operator` against a cluster."""

from __future__ import annotations

import click

from .common import fail, settings_of


@click.command()
@click.option("--grpc-port", type=int, help="Ray Serve's gRPC proxy port [env TWIN_GRPC_PORT, default 9000].")
@click.option("--http-port", type=int, help="HTTP gateway port [env TWIN_HTTP_PORT, default 8000].")
@click.option("--model", "generation_model", help="Generation model folder or cached hub id "
              "[env TWIN_GENERATION_MODEL; default: the embedded SmolLM2-135M-Instruct].")
@click.option("--trace-sampling-ratio", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of requests traced (exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set).")
@click.option("--stop", is_flag=True, help="Stop the platform started by `twin serve` for this data folder.")
@click.pass_context
def serve(ctx: click.Context, grpc_port, http_port, generation_model, trace_sampling_ratio, stop) -> None:
    """Serve the platform: gRPC (twin.v1) and HTTP (JSON + OpenAI API) over the local index."""
    from . import local_serving

    settings = settings_of(ctx).with_overrides(grpc_port=grpc_port, http_port=http_port,
                                               generation_model=generation_model)
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
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Namespace(s) to watch (repeatable; globs allowed).")
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


COMMANDS = [serve, operator]
