# connwatch container image: build with cargo, run from a slim image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
RUN cargo build --release --locked --bin connwatch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /app connwatch
COPY --from=build /src/target/release/connwatch /usr/local/bin/connwatch
WORKDIR /app
COPY config/connwatch.toml config/connwatch.toml
USER connwatch
ENTRYPOINT ["connwatch"]
CMD ["report"]
