# Build: docker build -t renkei .   Run: see docker-compose.yml
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p renkei

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /var/lib/renkei renkei
COPY --from=build /src/target/release/renkei /usr/local/bin/renkei
USER renkei
WORKDIR /var/lib/renkei
EXPOSE 8080
ENV RENKEI_LISTEN=0.0.0.0:8080
ENTRYPOINT ["renkei"]
CMD ["serve"]
