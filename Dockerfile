# The hashatlas image: one image for every process (compactor, worker, api, simulator, tools);
# docker-compose.yml picks the command. Build: docker build -t hashatlas:local .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# jemalloc: the compactor and workers preload it (HASHATLAS_ALLOCATOR): less fragmentation.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies and package first, so editing scenarios does not reinstall everything.
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY api ./api
RUN pip install .

COPY scenarios ./scenarios

# Not root; state (Faust tables' local stores, logs) under its home.
RUN useradd --system --uid 10001 --home-dir /var/lib/hashatlas --create-home hashatlas
USER hashatlas
ENV HASHATLAS_STATE_DIR=/var/lib/hashatlas

EXPOSE 8000 9110 9111
ENTRYPOINT ["hashatlas"]
CMD ["--help"]
