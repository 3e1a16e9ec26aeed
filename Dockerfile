# replicator: `replicator serve` on port 9100 (metrics, /healthz, /readyz, POST /events/<region>).
#
#   docker build -t replicator .
#   docker run -v "$PWD/config.yml:/etc/replicator/config.yml:ro" \
#              -v replicator-state:/var/lib/replicator -p 9100:9100 replicator
#
# The config's `state.path` must point into the /var/lib/replicator volume (for example
# /var/lib/replicator/replicator.db), or the state store is lost with the container (a full
# re-scan, nothing worse), and `server.listen` must stay on port 9100 (0.0.0.0:9100) for the
# HEALTHCHECK below.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/replicator
COPY pyproject.toml README.md ./
COPY replicator ./replicator
COPY drivers ./drivers
COPY state ./state
# Runtime dependencies only (no test extra), into a venv the final stage copies whole.
RUN /opt/replicator/bin/pip install --no-cache-dir ".[gcs,azure]"

FROM python:3.11-slim
ENV PATH=/opt/replicator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 replicator \
    && useradd --system --uid 10001 --gid replicator --no-create-home \
       --home-dir /var/lib/replicator --shell /usr/sbin/nologin replicator \
    && mkdir -p /etc/replicator /var/lib/replicator \
    && chown replicator:replicator /var/lib/replicator
COPY --from=build /opt/replicator /opt/replicator
USER 10001:10001
WORKDIR /var/lib/replicator
VOLUME ["/var/lib/replicator"]
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]
ENTRYPOINT ["replicator"]
CMD ["serve", "--config", "/etc/replicator/config.yml"]
