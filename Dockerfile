# The `stockanomaly` image: the binary, XGBoost's C library and the default
# feature pack. docker-compose.yml builds it for every StockAnomaly service.
#
#   docker build -t stockanomaly:local .
#   docker run --rm stockanomaly:local --help
#
# x86_64 only: scripts/xgboost-lib.sh fetches the manylinux x86_64 wheel.

# The toolchain the project is built and tested with (Cargo.toml's
# rust-version is the minimum).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

# libclang for bindgen (xgboost_lib-sys's build script); python3-pip for
# scripts/xgboost-lib.sh, which downloads PyPI's xgboost-cpu wheel.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libclang-dev python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*

# XGBoost 3.4.1's C library and the libgomp it needs, in
# $STOCKANOMALY_CACHE/xgboost-3.4.1. pipeline/build.rs bakes that folder into
# the binary's rpath, so the runtime stage puts it at the same path. Copied
# alone first so that the download stays cached across source changes.
ENV STOCKANOMALY_CACHE=/opt/stockanomaly
ENV XGBOOST_LIB_DIR=/opt/stockanomaly/xgboost-3.4.1
WORKDIR /src
COPY scripts/xgboost-lib.sh scripts/xgboost-lib.sh
RUN test "$(scripts/xgboost-lib.sh)" = "$XGBOOST_LIB_DIR"

COPY . .
RUN cargo build --release --locked -p stockanomaly \
    && install -D -m 0755 target/release/stockanomaly /out/stockanomaly


FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: TLS to PostgreSQL (PGSSLMODE=verify-full), S3 and the live
# feeds; libstdc++6: libxgboost.so is C++ (libgomp comes with the wheel).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --uid 10001 --home-dir /var/lib/stockanomaly \
        --shell /usr/sbin/nologin stockanomaly \
    && install -d -o stockanomaly -g stockanomaly \
        /var/lib/stockanomaly /var/lib/stockanomaly/lake /var/lib/stockanomaly/models

# Same path as in the builder: the binary's rpath points here (no
# LD_LIBRARY_PATH needed). The folder's symlinks (libxgboost.so.3, the
# libgomp name libxgboost.so asks for) are copied as symlinks.
COPY --from=builder /opt/stockanomaly/xgboost-3.4.1 /opt/stockanomaly/xgboost-3.4.1
COPY --from=builder /out/stockanomaly /usr/local/bin/stockanomaly

# The default feature pack and rules: `--queries` defaults to ./queries, so
# the working directory holds it; mount another folder over it to change
# features without rebuilding.
COPY queries /opt/stockanomaly/queries
WORKDIR /opt/stockanomaly

# Data (lake, models) lives in /var/lib/stockanomaly: a volume in compose.
ENV STOCKANOMALY_LAKE=/var/lib/stockanomaly/lake
USER stockanomaly
ENTRYPOINT ["stockanomaly"]
CMD ["--help"]
