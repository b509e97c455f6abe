# kandle-operator: a static (musl) binary on distroless, non-root.
#   docker build -f docker/operator.Dockerfile -t kandle-operator:0.1.0 .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# The operator does no numeric work: no CPU baseline beyond the default.
ENV RUSTFLAGS="-C target-cpu=x86-64"
RUN --mount=type=cache,target=/usr/local/cargo/registry --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kandle-operator --bin kandle-operator \
    && install -D target/release/kandle-operator /out/kandle-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kandle-operator /kandle-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/kandle-operator"]
CMD ["run"]
