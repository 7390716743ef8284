# The copilot binary in a small image. Built from the workspace:
#   docker build -t copilot:local .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p copilot \
 && install -D target/release/copilot /out/copilot

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 65534 -g 65534 /data
COPY --from=build /out/copilot /usr/local/bin/copilot
USER 65534:65534
ENV COPILOT_DATA_DIR=/data COPILOT_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["copilot"]
CMD ["up"]
