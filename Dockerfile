# syntax=docker/dockerfile:1
# erply-sessiond: a static binary on an empty base image, running as a
# non-root user; no shell, no package manager.
#
#   docker build --build-arg VERSION="$(git describe --tags --always)" -t erply-sessiond .
#   docker run -d --name sessiond -v sessiond:/run/erply-sessiond \
#     -e SESSIOND_CREDENTIALS=pos -e SESSIOND_POS_CLIENT_CODE=... \
#     -e SESSIOND_POS_USERNAME=... -e SESSIOND_POS_PASSWORD_FILE=/run/secrets/pos \
#     erply-sessiond
#   docker run --rm -v sessiond:/run/erply-sessiond --group-add 65532 IMAGE-WITH-CURL \
#     curl -fsS --unix-socket /run/erply-sessiond/sessiond.sock http://localhost/v1/sessions/pos/key
#
# scripts/build-image.sh builds the same final stage from a locally built
# binary, without pulling any image.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/erply-sessiond . \
 && mkdir -p /out/run/erply-sessiond \
 && chmod 0750 /out/run/erply-sessiond

FROM scratch AS final
ARG VERSION=dev
LABEL org.opencontainers.image.title="erply-sessiond" \
      org.opencontainers.image.description="Keeps Erply API sessions alive and serves their keys over a Unix socket" \
      org.opencontainers.image.version="${VERSION}"
# For the TLS connections to Erply.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/erply-sessiond /erply-sessiond
# The socket's directory, owned by the daemon's user so it can create the
# socket there; a named volume is initialised from it, so other containers
# that share the volume (with group 65532) find the socket.
COPY --from=build --chown=65532:65532 /out/run /run
# Numeric, so no /etc/passwd is needed (and Kubernetes runAsNonRoot can
# check it).
USER 65532:65532
ENV SESSIOND_SOCKET=/run/erply-sessiond/sessiond.sock \
    SESSIOND_HTTP_ADDR=127.0.0.1:8089
VOLUME /run/erply-sessiond
# GET /healthz over the socket; exit 0 or 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/erply-sessiond", "get", "--health"]
ENTRYPOINT ["/erply-sessiond"]
