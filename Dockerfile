# One image for every service: api, reaper, worker, the migrate job, taskctl and Flower.
#   docker compose build && docker compose up --scale worker=3
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOG_DIR=/app/logs

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p shared services \
    && touch shared/__init__.py services/__init__.py \
    && pip install ".[flower]" \
    && pip uninstall -y taskreaper \
    && rm -rf shared services build *.egg-info

COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin taskreaper \
    && mkdir -p /app/logs \
    && chown taskreaper /app/logs

USER taskreaper
EXPOSE 8897
# A worker drains on SIGTERM (its tasks go back to the queue from their checkpoints) and
# exits within DRAIN_GRACE (25 s): give it longer than that before SIGKILL (compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds, 30 s by default).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.api"]
