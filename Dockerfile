# connwatch container image: build with cargo, run from a slim image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin connwatch --bin connwatch-dev

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /app connwatch
COPY --from=build /src/target/release/connwatch /src/target/release/connwatch-dev /usr/local/bin/
WORKDIR /app
COPY config/connwatch.toml config/connwatch.toml
USER connwatch
# Prometheus /metrics, /healthz, /readyz when metrics.listen is set (e.g. 0.0.0.0:9464).
EXPOSE 9464
ENTRYPOINT ["connwatch"]
CMD ["run"]
