# syntax=docker/dockerfile:1
# kvgate and kvgate-engine for NVIDIA Jetson AGX Thor: JetPack 7 (Ubuntu 24.04, CUDA 13), arm64, sm_110.
#
#   docker build -f docker/Dockerfile.thor -t kvgate:thor .          (on the Jetson, from the repo root)
#
# CUDA 13 has one toolkit and one container line for every arm64 GPU (SBSA servers and Thor), so the
# stock CUDA 13 images run on Thor. Thor is compute capability 11.0: sm_110 with CUDA 13 (sm_101 in
# CUDA 12.x); a build without arch 110 fails on Thor at the first kernel.
# Jetson AGX Orin (sm_87) stays on JetPack 6 / CUDA 12.6, outside that line; build for it with
#   --build-arg BUILD_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
#   --build-arg RUNTIME_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0 --build-arg CUDA_ARCHS=87
# (JetPack 6 is Ubuntu 22.04; the runtime stage then keeps the whole JetPack image).
#
# Build stage: the toolkit, and the same `make test` that CI runs (.ci/run): units and integration
# tests (CPU engine, loopback ports) must pass or the image is not built, so what CI proves is what
# ships. Runtime stage: the CUDA runtime image, the two binaries, the shared libraries they load and
# curl for the health check; a non-root user.
ARG CUDA_VERSION=13.0.0
ARG BUILD_IMAGE=nvcr.io/nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04
ARG RUNTIME_IMAGE=nvcr.io/nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS build
ARG CUDA_ARCHS=110
ARG MAKE_TARGET=test
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# tools/deps.sh's list (build, then `make test`'s Node clients): installed here once so that the
# layer is cached; tools/deps.sh then finds them and installs nothing. Versions are the release's
# (not pinned): the CUDA base image pins the release.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential pkg-config libevent-dev libssl-dev libcjson-dev check node-llhttp \
        libonig-dev libutf8proc-dev libxxhash-dev openssl curl ca-certificates nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make clean && make NVCC=/usr/local/cuda/bin/nvcc CUDA_ARCHS="${CUDA_ARCHS}" "${MAKE_TARGET}" \
    && mkdir -p /out/bin \
    && cp build/bin/kvgate build/bin/kvgate-engine /out/bin/ \
    && sh docker/runtime-deps.sh /out/bin/kvgate /out/bin/kvgate-engine > /out/runtime-packages \
    && cat /out/runtime-packages

FROM ${RUNTIME_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-packages /tmp/runtime-packages
# the package list is one word per package, split on purpose
# hadolint ignore=DL3008,SC2046
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates $(cat /tmp/runtime-packages) \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
    && useradd --system --uid 10001 --user-group --home-dir /opt/kvgate --shell /usr/sbin/nologin kvgate
COPY --from=build /out/bin/ /opt/kvgate/bin/
COPY conf/ /opt/kvgate/conf/
COPY tools/mkcert.sh /opt/kvgate/tools/mkcert.sh
ENV PATH=/opt/kvgate/bin:${PATH} \
    KVGATE_HEALTH_URL=https://127.0.0.1:8443/health
WORKDIR /opt/kvgate
USER kvgate
EXPOSE 8443
# kvgate answers /health 200 while it has a usable engine (503 otherwise); an engine container
# sets KVGATE_HEALTH_URL=http://127.0.0.1:PORT/health (docker/compose.yaml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsSk --max-time 4 "$KVGATE_HEALTH_URL" -o /dev/null || exit 1
CMD ["kvgate", "-c", "/opt/kvgate/conf/jetson-thor.conf"]
