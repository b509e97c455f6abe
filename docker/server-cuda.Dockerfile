# kandle-server for NVIDIA GPUs (H100 and other sm_90 parts by default). Built the way
# ../shared/gpu/build-cuda.sh builds here: NVIDIA's CUDA 13.0 compiler wheels, candle's
# `cuda` feature, PTX+SASS for CUDA_COMPUTE_CAP. Runs on a CUDA 13.0 driver (580+).
#   docker build -f docker/server-cuda.Dockerfile -t kandle-server:0.1.0-cuda .
ARG RUST_VERSION=1.95
ARG CUDA_VERSION=13.0.1
ARG UBUNTU_RELEASE=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU_RELEASE} AS build
ARG RUST_VERSION
ARG CUDA_COMPUTE_CAP=90
ARG TARGET_CPU=x86-64-v3
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
ENV PATH=/root/.cargo/bin:/usr/local/cuda/bin:$PATH \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CUDARC_CUDA_VERSION=13000 \
    RUSTFLAGS="-C target-cpu=${TARGET_CPU}"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kandle-server --bin kandle-server --features cuda \
    && install -D target/release/kandle-server /out/kandle-server

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU_RELEASE}
# cuBLAS and cuRAND are loaded at run time (candle links cudarc dynamically).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcublas-13-0 libcurand-13-0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kandle-server /usr/local/bin/kandle-server
RUN useradd --uid 65532 --user-group --no-create-home kandle && mkdir -p /models /model-cache /var/cache/cuda \
    && chown 65532:65532 /model-cache /var/cache/cuda
# The driver's PTX JIT cache; the operator mounts a volume here (CUDA_CACHE_PATH).
ENV CUDA_CACHE_PATH=/var/cache/cuda
VOLUME /var/cache/cuda
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["kandle-server"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda", "--model", "/models"]
