# syntax=docker/dockerfile:1
#
# Production image of sponsorflow. One image, three roles:
#   sponsorflow api       (the default CMD; HTTP on port 8000)
#   sponsorflow worker    (Temporal worker; scale it horizontally)
#   sponsorflow migrate   (one-shot; run as the schema owner before api/worker)
# docker-compose.yml shows the scale-out topology built on it; `make up` is the dev path.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 sponsorflow \
 && useradd --system --uid 10001 --gid sponsorflow --home-dir /app --create-home \
      --shell /usr/sbin/nologin sponsorflow

# Copy only what the package is built from: there is no .dockerignore, and .venv, .data,
# .env and tests must never end up in the image. README* is optional (the glob may match
# nothing because pyproject.toml is copied by the same instruction).
WORKDIR /build
COPY pyproject.toml README* ./
COPY cli.py settings.py worker.py ./
COPY activities/ activities/
COPY api/ api/
COPY db/ db/
COPY domain/ domain/
COPY migrations/ migrations/
COPY workflows/ workflows/
# migrations/ and migrations/versions/ are installed as packages next to db/, which is where
# db.migrate looks for them (no alembic.ini needed); the build tree is not kept.
RUN pip install . \
 && cd / \
 && rm -rf /build

WORKDIR /app
USER 10001:10001

ENV SPONSORFLOW_ENVIRONMENT=production \
    SPONSORFLOW_API_HOST=0.0.0.0 \
    SPONSORFLOW_API_PORT=8000 \
    SPONSORFLOW_DATA_DIR=/app/data

EXPOSE 8000

# Liveness of the API (the slim image has no curl). Worker and migrate containers override
# or disable this in their orchestrator (see docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SPONSORFLOW_API_PORT', '8000'), timeout=4)" || exit 1

CMD ["sponsorflow", "api"]
