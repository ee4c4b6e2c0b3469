"""The application shell: the `twin` command, the demo, the benchmarks and local serving.

The top layer: it may import everything below it (llm_twin, services, training, operators);
nothing imports it."""
