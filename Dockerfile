# One image for every process (SPEC §2): api, worker, beat, flower and the
# one-shot `reversals migrate`. docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STATE_DIR=/var/lib/reversals

WORKDIR /app

# Pinned dependencies first, in their own layer, so code changes reuse it.
# requirements.lock is a pip freeze: drop the project's own line (an editable
# `-e /path` or `reversals==...`), which is installed from source below.
COPY requirements.lock ./
RUN grep -v -E '^(-e[[:space:]]|reversals[[:space:]]*(==|@))' requirements.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# README* (pyproject's `readme`) may be absent: setuptools then only warns.
COPY pyproject.toml README* ./
COPY worker ./worker
COPY api_stub ./api_stub
RUN pip install --no-deps . \
    && rm -rf /app/build /app/*.egg-info

# Run as an unprivileged user; STATE_DIR (beat's schedule file) is its only
# writable place.
RUN groupadd --system --gid 10001 reversals \
    && useradd --system --uid 10001 --gid reversals --home-dir /var/lib/reversals \
       --shell /usr/sbin/nologin reversals \
    && install -d -o reversals -g reversals -m 0750 /var/lib/reversals
USER 10001:10001

EXPOSE 8000 5555

CMD ["reversals", "api", "--host", "0.0.0.0", "--port", "8000"]
