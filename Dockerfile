# Images of the three roles, all from the one multi-call executable of `npm run build`
# (dist/<platform>/quic-tunnel), for linux/amd64 (the default) and linux/arm64.
#
#   quic-server, quic-client, quic-client-tcp                      distroless cc (glibc, libgcc_s), non-root
#   quic-server-scratch, quic-client-scratch, quic-client-tcp-scratch   FROM scratch with exactly the files
#                                                                  the binary needs (scripts/rootfs.ts)
#
# Each runs /quic-tunnel with its role (server, agent, agent-tcp) as first argument.
#
#   docker build --target quic-server -t quic-server .
#   docker build --platform linux/arm64 --target quic-server -t quic-server:arm64 .
#
# The image stages copy from the `artifacts` stage (dist/<platform>/ with its rootfs/). Where no
# registry is reachable, build those on the host (`npm run build && npm run rootfs`) and pass them
# in instead; the scratch targets then build offline, for either platform:
#   podman build --build-context artifacts=. --target quic-server-scratch -t quic-server:scratch .
#   podman build --platform linux/arm64 --build-context artifacts=. --target quic-server-scratch -t quic-server:scratch-arm64 .

# The builder cross-compiles both platforms on linux/amd64 (scripts/build.ts embeds the linux-x64
# quiche addon). It is a Node image because npm installs the pinned Bun (scripts/build.ts runs on
# it) and fetches the aarch64 runtime; the arm64 root filesystem needs Debian's arm64 glibc and
# qemu to list it. As in .ci/run, npm install rather than npm ci (the lock names unpublished packages).
FROM --platform=linux/amd64 node:24-bookworm AS builder
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static libc6-arm64-cross libgcc-s1-arm64-cross \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm install --no-audit --no-fund
COPY . .
RUN npm run build && npm run rootfs

FROM scratch AS artifacts
COPY --from=builder /src/dist/ /dist/

# The target platform's executable and root filesystem. dist/amd64 and dist/arm64 (Docker's names
# for the CPUs, as in TARGETARCH) link to dist/linux-x64 and dist/linux-arm64.
FROM scratch AS platform
ARG TARGETARCH
COPY --from=artifacts /dist/${TARGETARCH}/quic-tunnel /quic-tunnel
COPY --from=artifacts /dist/${TARGETARCH}/rootfs/ /rootfs/

FROM gcr.io/distroless/cc-debian12:nonroot AS quic-server
COPY --from=platform /quic-tunnel /quic-tunnel
USER 65532:65532
ENTRYPOINT ["/quic-tunnel", "server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS quic-client
COPY --from=platform /quic-tunnel /quic-tunnel
USER 65532:65532
ENTRYPOINT ["/quic-tunnel", "agent"]

FROM gcr.io/distroless/cc-debian12:nonroot AS quic-client-tcp
COPY --from=platform /quic-tunnel /quic-tunnel
USER 65532:65532
ENTRYPOINT ["/quic-tunnel", "agent-tcp"]

FROM scratch AS quic-server-scratch
COPY --from=platform /rootfs/ /
COPY --from=platform /quic-tunnel /quic-tunnel
USER 65532:65532
ENTRYPOINT ["/quic-tunnel", "server"]

FROM scratch AS quic-client-scratch
COPY --from=platform /rootfs/ /
COPY --from=platform /quic-tunnel /quic-tunnel
USER 65532:65532
ENTRYPOINT ["/quic-tunnel", "agent"]

FROM scratch AS quic-client-tcp-scratch
COPY --from=platform /rootfs/ /
COPY --from=platform /quic-tunnel /quic-tunnel
USER 65532:65532
ENTRYPOINT ["/quic-tunnel", "agent-tcp"]
