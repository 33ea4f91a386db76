# The study in a container: train, evaluate, predict and serve (docs/container.md).
#
#   docker build -t ham10000 .                    CPU, TensorFlow (the default target, `cpu`)
#   docker build --target gpu -t ham10000:gpu .   NVIDIA GPU, JAX with CUDA (run with --gpus all)
#
# Build arguments: BASE (any Debian-like image with python3 and its venv module, Python >= 3.10),
# EXTRAS (pyproject.toml extras beyond the base dependencies: serve by default; serve,track adds
# MLflow), TENSORFLOW (the CPU target's TensorFlow: tensorflow-cpu, or tensorflow), JAX (the GPU
# target's JAX: jax[cuda13], or jax[cuda12] for an older driver).
ARG BASE=python:3.11-slim

# === Build stages: a virtual environment with the runtime dependencies, nothing else ===

FROM ${BASE} AS builder
# binutils for strip (install.sh); the build stages only.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
WORKDIR /build
# Only what the requirements come from: a change to the code does not reinstall them.
COPY pyproject.toml ./
COPY container/requirements.py container/install.sh container/

FROM builder AS deps-cpu
ARG EXTRAS=serve
ARG TENSORFLOW=tensorflow-cpu
RUN container/install.sh "$EXTRAS" "$TENSORFLOW"

# No TensorFlow: under JAX the project needs none (TensorBoard logs are then skipped, saying so).
FROM builder AS deps-gpu
ARG EXTRAS=serve
ARG JAX=jax[cuda13]
RUN container/install.sh "$EXTRAS" "" "$JAX"

# === Runtime: the base image, the environment, the code; a user without root ===

FROM ${BASE} AS runtime
# HOME is writable by any user, so that `--user "$(id -u):$(id -g)"` works too: the image cache
# (in .cache, which a named volume mounted there inherits), Keras's and Matplotlib's settings.
RUN useradd --uid 1000 --user-group --no-log-init --home-dir /home/app --shell /usr/sbin/nologin app \
 && mkdir -p /home/app/.cache /app/results \
 && chown app:app /app/results \
 && chmod 1777 /home/app /home/app/.cache
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/app \
    HAM10000_DIR=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
EXPOSE 8000
# Healthy while `serve` answers GET /health; containers that train count as healthy while they run.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD ["python", "container/healthcheck.py"]
USER app
ENTRYPOINT ["python", "main.py"]
CMD ["--help"]

FROM runtime AS gpu
COPY --from=deps-gpu /opt/venv /opt/venv
COPY . /app
ENV KERAS_BACKEND=jax

# The default target, last.
FROM runtime AS cpu
COPY --from=deps-cpu /opt/venv /opt/venv
COPY . /app
