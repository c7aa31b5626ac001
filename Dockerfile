# syntax=docker/dockerfile:1
# One image for every `pipeline` verb: worker, gateway, consumers, scale, topics, models, replay, dlq.
# docs/deployment.md#the-image says what it holds, where its data go and how big it is.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: pip, wheels and the CPU build of torch; nothing of it but /opt/venv goes on.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch for `pipeline models train` only (Triton scores in its own image): its CPU build, not
# PyPI's, which brings 3.5 GB of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install . && pip uninstall --yes pip

# Runtime stage: the virtual environment, the contract's files, a user of its own.
FROM ${PYTHON_IMAGE}
# The user's id, by number in USER below (a name may not resolve on the host).
ARG UID=10001
RUN groupadd --system --gid "${UID}" pipeline \
 && useradd --system --uid "${UID}" --gid pipeline --home-dir /var/lib/pipeline --shell /usr/sbin/nologin pipeline
COPY --from=build /opt/venv /opt/venv
# Read-only files: the topics' definitions, the Feast repository's definitions, the models' code
# and Triton configurations (their trained versions: `pipeline models train`), and the models' GPU
# configurations (deploy/triton/gpu/, which the Helm chart's set-up uses on a GPU).
COPY topics /opt/pipeline/topics
COPY feature_repo /opt/pipeline/feature_repo
# Everything written goes under /var/lib/pipeline, one volume: the dedup state, the consumers'
# data, the scaled workers' run directory, the Feast repository (registry and SQLite online store)
# and the Triton model repository the models verbs write versions into.
COPY triton_models /opt/pipeline/triton_models
COPY deploy/triton/gpu /opt/pipeline/triton_gpu
RUN mkdir -p /var/lib/pipeline/state /var/lib/pipeline/consumers /var/lib/pipeline/scale \
 && cp -r /opt/pipeline/feature_repo /var/lib/pipeline/feature_repo \
 && cp -r /opt/pipeline/triton_models /var/lib/pipeline/models \
 && chown -R pipeline:pipeline /var/lib/pipeline
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIPELINE_LOG_FORMAT=json \
    PIPELINE_TOPICS__DEFINITIONS=/opt/pipeline/topics/topics.yaml \
    PIPELINE_WORKER__STATE_DIR=/var/lib/pipeline/state \
    PIPELINE_CONSUMERS__DATA_DIR=/var/lib/pipeline/consumers \
    PIPELINE_SCALING__RUN_DIR=/var/lib/pipeline/scale \
    PIPELINE_FEAST__REPO_PATH=/var/lib/pipeline/feature_repo \
    PIPELINE_TRITON__MODEL_REPOSITORY=/var/lib/pipeline/models \
    HEALTHCHECK_URL=http://127.0.0.1:9100/metrics
VOLUME ["/var/lib/pipeline"]
USER ${UID}:${UID}
WORKDIR /var/lib/pipeline
# Each process serves HTTP: the worker its metrics (:9100), the bridge /healthz (:8080), the
# consumers their metrics (:9101), `scale --serve` /healthz (:9105). Set HEALTHCHECK_URL to the
# process's own; a one-shot verb (topics, models, replay) needs none.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=4 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["pipeline"]
CMD ["worker"]
