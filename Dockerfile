# One image for every lab service, the Locust load generator and the drill CLI.
#
# BASE_IMAGE: the official slim Python image by default. Any Debian-like image with python3
# (3.11 or later) and its venv module stands in where no registry is reachable, e.g. a
# debootstrapped bookworm imported with `docker import`.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/drill/bin:$PATH \
    DRILL_STATE_DIR=/var/lib/drill

# A venv from `python3 -m venv`: the same on the official image (whose python3 lives in
# /usr/local) and on Debian's python3 (which refuses system-wide pip installs, PEP 668).
# A base without useradd (a stripped image) gets the passwd lines useradd would write.
RUN python3 -m venv /opt/drill \
 && if command -v useradd >/dev/null; then \
        useradd --uid 10001 --user-group --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin drill; \
    else \
        echo 'drill:x:10001:10001::/app:/usr/sbin/nologin' >> /etc/passwd \
     && echo 'drill:x:10001:' >> /etc/group; \
    fi \
 && mkdir -p /var/lib/drill && chown drill:drill /var/lib/drill

WORKDIR /app

# Dependencies first, from the lock alone (uv.lock, as scripts/bootstrap installs them): a code
# change reuses this layer. The services and what a fix may use (`fixes`), and Locust (`load`):
# compose's locust container runs from this image too. uv (pinned as in scripts/bootstrap)
# lives in /opt/uv, outside the synced venv.
ARG UV_VERSION=0.13.8
ENV UV_PROJECT_ENVIRONMENT=/opt/drill UV_PYTHON=/opt/drill/bin/python3 UV_NO_CACHE=1
COPY pyproject.toml uv.lock README.md ./
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install "uv==${UV_VERSION}" \
 && /opt/uv/bin/uv sync --locked --no-install-project --extra fixes --extra load

# The project: services, faults and drill as installed packages; loadtests, scenarios.yaml
# and solutions stay under /app, where drill finds its root.
COPY . .
RUN /opt/uv/bin/uv sync --locked --no-editable --extra fixes --extra load \
 && drill --help >/dev/null

USER drill
# ledger, chain-a/b/c, feed, profiles, locust web
EXPOSE 8001 8011 8012 8013 8021 8022 8089
CMD ["drill", "--help"]
