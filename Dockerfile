# llmtap proxy image: slim Python, non-root, read-only-root friendly.
#   docker build -t llmtap:0.1.0 .
#   docker run --rm -p 8787:8787 -e LLMTAP_UPSTREAM=https://api.openai.com \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318 llmtap:0.1.0
# Arguments after the image name go to `llmtap serve` (e.g. --config /etc/llmtap/config.yaml --metrics-port 9464).

# --- build: install the package and its dependencies into a virtual environment ---
FROM python:3.12-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/llmtap

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY proxy ./proxy
RUN /opt/llmtap/bin/pip install --no-cache-dir . \
    && /opt/llmtap/bin/python -m compileall -q /opt/llmtap/lib

# --- runtime: the virtual environment on a clean slim image, run as an unprivileged user ---
FROM python:3.12-slim

LABEL org.opencontainers.image.title="llmtap" \
      org.opencontainers.image.description="OpenTelemetry proxy for LLM APIs: TTFT, ITL, TPOT, tokens, cold starts" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 llmtap \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin llmtap

COPY --from=build /opt/llmtap /opt/llmtap

# LLMTAP_HOST=0.0.0.0: in a container the proxy must listen on all interfaces (its default is 127.0.0.1).
ENV PATH=/opt/llmtap/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLMTAP_HOST=0.0.0.0 \
    LLMTAP_PORT=8787

# Numeric user, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp

# 8787: the proxy; 9464: the Prometheus endpoint when started with --metrics-port 9464 (LLMTAP_METRICS_PORT).
EXPOSE 8787 9464

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LLMTAP_PORT', '8787'), timeout=2)"]

# SIGTERM reaches llmtap directly (exec form, PID 1): it drains streams and flushes telemetry, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llmtap", "serve"]
