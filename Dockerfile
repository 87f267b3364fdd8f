# syntax=docker/dockerfile:1.10
# ASR API server image, with one Whisper model baked in so a container starts without network.
#
#   docker build -t asr-api .                                                   # CUDA, embedded tiny.en
#   docker build -t asr-api:large-v3 --build-arg MODEL_ID=openai/whisper-large-v3 .
#   docker build -t asr-api:cpu --build-arg TORCH_FLAVOR=cpu .                  # CPU-only torch
#   docker run --gpus all -p 8000:8000 -v asr-data:/data asr-api
#
# Base image: python:3.12-slim, not nvidia/cuda. torch's PyPI wheels bring their own CUDA 13
# runtime, cuBLAS and cuDNN as pip packages, so a CUDA base would add a second, unused copy of
# those libraries (gigabytes). The host needs an NVIDIA driver that supports CUDA 13 (>= 580)
# and the NVIDIA Container Toolkit (`docker run --gpus all`). Dockerfile.fa2 mirrors this file
# (plus FlashAttention-2): keep the two in step.

ARG PYTHON_IMAGE=python:3.12-slim-trixie

# --- base: Python, ffmpeg and libsndfile (audio decoding), a virtualenv --------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Debian's security updates replace package versions in place, so pinning them would break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

# --- deps: the pinned requirements; TORCH_FLAVOR=cpu takes torch from PyTorch's CPU index ----
FROM base AS deps
ARG TORCH_FLAVOR=cuda
COPY requirements.txt constraints-cuda.txt /tmp/
# The CPU wheel is the same torch version (2.13.0+cpu satisfies torch==2.13.0) without the CUDA
# libraries; its dependencies then come pinned from requirements.txt.
# hadolint ignore=DL3013
RUN case "$TORCH_FLAVOR" in \
        cuda) ;; \
        cpu) pip install --no-cache-dir --no-deps --index-url https://download.pytorch.org/whl/cpu \
                "$(grep '^torch==' /tmp/requirements.txt)" ;; \
        *) echo "TORCH_FLAVOR must be cuda or cpu, not '$TORCH_FLAVOR'" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints-cuda.txt

# --- model: fetch/convert MODEL_ID into /opt/model (a plain transformers checkpoint) ---------
# Only the modules the prefetch needs are copied, so editing the API does not re-download weights.
# A gated or private hub model: `docker build --secret id=hf_token,env=HF_TOKEN ...`.
FROM deps AS model
ARG MODEL_ID=embedded/whisper-tiny.en
WORKDIR /src
COPY app/__init__.py app/settings.py app/
COPY app/inference/ app/inference/
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN \
    MODEL_ID="$MODEL_ID" CACHE_DIR=/tmp/prefetch-cache python -m app.inference.prefetch --output /opt/model \
    && rm -rf /tmp/prefetch-cache

# --- runtime ------------------------------------------------------------------------------
FROM deps AS runtime
ARG MODEL_ID=embedded/whisper-tiny.en
LABEL org.opencontainers.image.title="asr-api" \
      org.opencontainers.image.description="Whisper speech-to-text API (gunicorn + gevent, transformers)" \
      asr-api.model-id="${MODEL_ID}"
RUN groupadd --system --gid 10001 asr \
    && useradd --system --uid 10001 --gid asr --create-home --home-dir /home/asr asr \
    && mkdir -p /data \
    && chown asr:asr /data
WORKDIR /srv/asr
COPY --from=model /opt/model /opt/model
COPY gunicorn.conf.py wsgi.py ./
COPY app/ app/
# MODEL_ID points at the baked checkpoint (set MODEL_ID at run time to serve another model; hub
# ids are then downloaded into the /data volume). /data is outside the baked model on purpose:
# a volume mounted there cannot hide it.
ENV MODEL_ID=/opt/model \
    CACHE_DIR=/data \
    HF_HOME=/data/huggingface \
    PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# /hc answers 503 while the model loads (and while draining after SIGTERM), 200 when ready.
# The probe reads PORT through the same Settings object as the server.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from app.settings import Settings; urllib.request.urlopen(f'http://127.0.0.1:{Settings().port}/hc', timeout=4)"]
# gunicorn drains for up to graceful_timeout (60 s) after SIGTERM: stop with `docker stop -t 75`.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
