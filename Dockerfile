# connwatch container image: build with cargo, run from a slim image as a non-root user.
# The default (last) target is the service and carries only `connwatch`; the `demo-tools` target
# carries `connwatch-dev` (testkit/) for docker-compose's leaking demo client.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# The workspace lists testkit/, so cargo needs its files even to build connwatch alone.
COPY testkit testkit
RUN cargo build --release --locked -p connwatch --bin connwatch

FROM build AS build-tools
RUN cargo build --release --locked -p testkit --bin connwatch-dev

FROM debian:bookworm-slim AS base
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /app connwatch
WORKDIR /app

# Development tooling for the demo only: never deploy this image.
FROM base AS demo-tools
COPY --from=build-tools /src/target/release/connwatch-dev /usr/local/bin/
USER connwatch
ENTRYPOINT ["connwatch-dev"]

FROM base AS connwatch
COPY --from=build /src/target/release/connwatch /usr/local/bin/
COPY config/connwatch.toml config/connwatch.toml
USER connwatch
# Prometheus /metrics, /healthz, /readyz when metrics.listen is set (e.g. 0.0.0.0:9464).
EXPOSE 9464
ENTRYPOINT ["connwatch"]
CMD ["run"]
