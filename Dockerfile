# syntax=docker/dockerfile:1
#
# The millrace image: one static binary, /usr/local/bin/millrace, on a
# distroless base that runs as the unprivileged "nonroot" user (65532).
#
#   docker build -t millrace:dev .
#   docker run --rm -p 8080:8080 -e MILLRACE_HTTP__ADDR=0.0.0.0:8080 millrace:dev
#
# The default command runs the config mounted at /etc/millrace/millrace.toml
# (the embedded topology's example config when nothing is mounted). The
# deployment guides in docs/deployment mount their own.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# CGO off: the binary needs no C library, so it runs on a static base.
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/millrace/millrace/cmd/millrace/cli.Version=${VERSION}" \
      -o /out/millrace ./cmd/millrace \
 && mkdir -p /out/state/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/millrace /usr/local/bin/millrace
COPY topologies/embedded.toml /etc/millrace/millrace.toml
COPY topologies/*.toml /etc/millrace/examples/
# The working directory holds the embedded topology's data dir
# (data/embedded, relative); it must be writable by nonroot.
COPY --from=build --chown=65532:65532 /out/state /var/lib/millrace
WORKDIR /var/lib/millrace
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/millrace"]
CMD ["run", "-c", "/etc/millrace/millrace.toml"]
