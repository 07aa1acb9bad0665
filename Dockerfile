# vswitchd node image: the daemon, the CLI and the CNI plugin binary (deploy/daemonset.yaml).
#
#   docker build -t vswitch:dev .                  with a registry (rust and debian images)
#   bash deploy/image.sh build                     without one: local base images made with
#                                                  debootstrap, the host's Rust toolchain mounted
#                                                  into the build stage (see README "Container image")
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The build stage installs its packages with the same script as a developer machine.
COPY deploy/install-build-deps.sh deploy/
COPY deploy/lib/apt.sh deploy/lib/
RUN bash deploy/install-build-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# No debug info in the image's binaries (the workspace's release profile keeps line tables for
# profiling); the registry and target dir are build caches, so the binaries are copied out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked --bins -p vswitch -p vswitch-cni \
    && mkdir -p /out \
    && cp target/release/vswitchd target/release/vswitchctl target/release/vswitch /out/

FROM ${RUNTIME_IMAGE}
# The runtime packages, all of them: vswitchd runs `ip` (iproute2) and `nsenter` (util-linux)
# to configure pod interfaces. Nothing else is needed at run time.
ARG RUNTIME_PACKAGES="iproute2 util-linux"
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /out/vswitchd /out/vswitchctl /usr/local/bin/
COPY --from=build /out/vswitch /opt/cni/bin/vswitch
COPY deploy/install-cni.sh /usr/local/bin/vswitch-install-cni
VOLUME ["/var/lib/vswitch", "/run/vswitch"]
ENTRYPOINT ["/usr/local/bin/vswitchd"]
