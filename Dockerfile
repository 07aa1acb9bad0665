# vswitchd node image: the daemon, the CLI and the CNI plugin binary.
# Build: docker build -t vswitch:dev .   (run as a privileged, hostNetwork DaemonSet: deploy/)
FROM rust:1-bookworm AS build
WORKDIR /src
# etcd-client generates its gRPC code with protoc.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bins -p vswitch -p vswitch-cni

FROM debian:bookworm-slim
# iproute2 + util-linux (nsenter): pod interface plumbing; no other runtime dependency.
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 util-linux \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/vswitchd /src/target/release/vswitchctl /usr/local/bin/
COPY --from=build /src/target/release/vswitch /opt/cni/bin/vswitch
VOLUME ["/var/lib/vswitch", "/run/vswitch"]
ENTRYPOINT ["/usr/local/bin/vswitchd"]
