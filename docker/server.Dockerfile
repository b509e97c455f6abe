# kandle-server for CPUs. Not built in CI (no container engine on the CI machines); kept in
# step with the binary's flags and paths by hand — see README "Container images".
#   docker build -f docker/server.Dockerfile -t kandle-server:0.1.0 .
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# A portable baseline instead of .cargo/config.toml's target-cpu=native (AVX2/FMA, which
# candle's CPU kernels need to be fast).
ARG TARGET_CPU=x86-64-v3
ENV RUSTFLAGS="-C target-cpu=${TARGET_CPU}"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kandle-server --bin kandle-server \
    && install -D target/release/kandle-server /out/kandle-server

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kandle-server /usr/local/bin/kandle-server
# The operator's pods run as a non-root user and mount models at /models or /model-cache.
RUN useradd --uid 65532 --user-group --no-create-home kandle && mkdir -p /models /model-cache \
    && chown 65532:65532 /model-cache
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["kandle-server"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/models"]
