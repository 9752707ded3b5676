# roadrep daemon image (Debian 12).
#   docker build -t roadrep .
#   docker run -p 8470:8470 -v roadrep-data:/var/lib/roadrep \
#     -v $PWD/my-roadrep.toml:/etc/roadrep/roadrep.toml:ro roadrep
# The default config runs no stream (the API serves the store); mount one
# with [[streams]] to ingest cameras.

FROM rust:1-bookworm AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      pkg-config cmake nasm python3-venv \
      libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin roadrep
# ONNX Runtime comes from its PyPI wheel (ort is built with load-dynamic).
RUN python3 -m venv /opt/ort && /opt/ort/bin/pip install --no-cache-dir onnxruntime==1.31.1 \
    && cp /opt/ort/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 /libonnxruntime.so

FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
      gstreamer1.0-plugins-ugly gstreamer1.0-libav ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/roadrep --shell /usr/sbin/nologin roadrep \
    && mkdir -p /var/lib/roadrep /var/cache/roadrep && chown roadrep /var/lib/roadrep /var/cache/roadrep
COPY --from=build /src/target/release/roadrep /usr/bin/roadrep
COPY --from=build /libonnxruntime.so /usr/lib/roadrep/libonnxruntime.so
COPY models/clip-tiny /usr/share/roadrep/models/clip-tiny
COPY models/blip-tiny /usr/share/roadrep/models/blip-tiny
COPY config/labels.toml /etc/roadrep/labels.toml
COPY config/roadrep.container.toml /etc/roadrep/roadrep.toml
ENV ORT_DYLIB_PATH=/usr/lib/roadrep/libonnxruntime.so XDG_CACHE_HOME=/var/cache/roadrep
USER roadrep
VOLUME /var/lib/roadrep
EXPOSE 8470
ENTRYPOINT ["/usr/bin/roadrep", "-c", "/etc/roadrep/roadrep.toml"]
CMD ["run"]
