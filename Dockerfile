# HashCheck server image: `docker build -t hashcheck .`
#
#   docker run -v hashcheck-data:/data hashcheck import --data /data --list NAME /data/list.txt
#   docker run -v hashcheck-data:/data -p 50051:50051 hashcheck \
#     serve --insecure-no-auth
#
# Settings come from flags, HASHCHECK_* variables or a TOML file named by
# HASHCHECK_CONFIG (docs/operations.md). The image runs as an unprivileged
# user and keeps its data in the /data volume. Metrics are on port 9090 of
# the container's loopback only: they name tenants and lists. For a
# Prometheus outside, add -e HASHCHECK_METRICS_LISTEN=0.0.0.0 and publish
# the port where only it can reach it (-p 127.0.0.1:9090:9090).

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/hashcheck
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
RUN /opt/hashcheck/bin/pip install ".[server]"


FROM python:3.11-slim-bookworm

ENV PATH=/opt/hashcheck/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HASHCHECK_DATA=/data \
    HASHCHECK_LISTEN=0.0.0.0:50051 \
    HASHCHECK_METRICS_PORT=9090 \
    HASHCHECK_LOG_FORMAT=json

RUN groupadd --system --gid 10001 hashcheck \
    && useradd --system --uid 10001 --gid hashcheck --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hashcheck \
    && mkdir /data \
    && chown hashcheck:hashcheck /data

COPY --from=build /opt/hashcheck /opt/hashcheck

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9090

# Our own probe of the standard gRPC health service: exit 0 when SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["hashcheck-server", "healthcheck", "--address", "127.0.0.1:50051"]

ENTRYPOINT ["hashcheck-server"]
CMD ["serve"]
