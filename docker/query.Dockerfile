# Query service: python -m iotpipe.query execs gunicorn with the repository's config (port 5000).
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
COPY services/ services/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 iotpipe \
    && useradd --system --uid 10001 --gid iotpipe --no-create-home --home-dir /nonexistent iotpipe
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    IOTPIPE_QUERY_HOST=0.0.0.0 IOTPIPE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["python", "-m", "iotpipe.query"]
