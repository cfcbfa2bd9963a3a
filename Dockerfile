# Images of the three roles, built from the standalone executables of `npm run build`.
#
#   quic-server, quic-client, quic-client-tcp                      distroless cc (glibc, libgcc_s), non-root
#   quic-server-scratch, quic-client-scratch, quic-client-tcp-scratch   FROM scratch with exactly the files
#                                                                  the binary needs (scripts/rootfs.ts)
#
#   docker build --target quic-server -t quic-server .
#
# The image stages copy from the `artifacts` stage (dist/ and dist/rootfs). Where no registry is
# reachable, build those on the host (`npm run build && npm run rootfs`) and pass them in instead:
#   podman build --build-context artifacts=. --target quic-server-scratch -t quic-server:scratch .

FROM oven/bun:1.4-debian AS builder
WORKDIR /src
COPY package.json package-lock.json ./
RUN bun install --frozen-lockfile --ignore-scripts
COPY . .
RUN bun run scripts/build.ts && bun run scripts/rootfs.ts dist/rootfs dist/quic-server dist/quic-agent dist/quic-agent-tcp

FROM scratch AS artifacts
COPY --from=builder /src/dist/ /dist/

FROM gcr.io/distroless/cc-debian12:nonroot AS quic-server
COPY --from=artifacts /dist/quic-server /quic-server
USER 65532:65532
ENTRYPOINT ["/quic-server"]

FROM gcr.io/distroless/cc-debian12:nonroot AS quic-client
COPY --from=artifacts /dist/quic-agent /quic-agent
USER 65532:65532
ENTRYPOINT ["/quic-agent"]

FROM gcr.io/distroless/cc-debian12:nonroot AS quic-client-tcp
COPY --from=artifacts /dist/quic-agent-tcp /quic-agent-tcp
USER 65532:65532
ENTRYPOINT ["/quic-agent-tcp"]

FROM scratch AS quic-server-scratch
COPY --from=artifacts /dist/rootfs/ /
COPY --from=artifacts /dist/quic-server /quic-server
USER 65532:65532
ENTRYPOINT ["/quic-server"]

FROM scratch AS quic-client-scratch
COPY --from=artifacts /dist/rootfs/ /
COPY --from=artifacts /dist/quic-agent /quic-agent
USER 65532:65532
ENTRYPOINT ["/quic-agent"]

FROM scratch AS quic-client-tcp-scratch
COPY --from=artifacts /dist/rootfs/ /
COPY --from=artifacts /dist/quic-agent-tcp /quic-agent-tcp
USER 65532:65532
ENTRYPOINT ["/quic-agent-tcp"]
