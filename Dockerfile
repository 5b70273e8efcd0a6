# inventory-sync for Prefect docker and kubernetes work pools: a slim Python base, the locked
# dependencies (hash-checked, then pruned to what runs), the product installed as a package
# (flows, tasks, expectations, deployments: no sandbox, dev tooling or tests), a non-root user.
# /opt/inventory-sync is the folder holding flows/, where the deployments' runs start. The
# configuration, feeds and state are not in the image: configs are mounted or added by a
# derived image, feeds are read over the network (or a read-only volume), the
# state lives in PostgreSQL (state.url), and secrets come from Prefect Secret blocks.
#
#   docker build -t registry.example.com/inventory-sync:0.1.0 .
#   docker run --rm registry.example.com/inventory-sync:0.1.0 inventory-sync --help
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/inventory-sync
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY flows/ flows/
COPY tasks/ tasks/
COPY expectations/ expectations/
COPY deployments/ deployments/
RUN pip install --no-deps --no-build-isolation . \
    && python deployments/docker/prune_to_runtime.py \
    && cd / && python -c "import flows.sync, tasks.state.store, flows.server.suppliers" \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG PYTHON_VERSION
RUN groupadd --gid 10001 sync && useradd --uid 10001 --gid sync --create-home sync
COPY --from=build /opt/venv /opt/venv
RUN ln -s /opt/venv/lib/python${PYTHON_VERSION}/site-packages /opt/inventory-sync
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PREFECT_HOME=/home/sync/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1
WORKDIR /home/sync
USER 10001:10001
CMD ["inventory-sync", "--help"]
