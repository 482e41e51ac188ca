# syntax=docker/dockerfile:1
# The weir agent: a static (musl) binary on an empty base, run as a non-root user.
# deploy/release.sh is the build; CI runs the same script outside Docker and checks
# that the binary runs (`weir --version`).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-tools: aws-lc (the TLS crypto) is C, compiled for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    deploy/release.sh --out /out/weir

FROM scratch
# CA certificates for a Prometheus or Mimir behind a public CA; a private one comes
# from --prometheus-ca-file.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/weir /weir
USER 65532:65532
ENTRYPOINT ["/weir"]
