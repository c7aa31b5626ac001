# The pipeline's processes (worker, gateway, CLI) for docker-compose and Kubernetes.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY topics ./topics
COPY feature_repo ./feature_repo
COPY triton_models ./triton_models
RUN pip install --no-cache-dir .
ENV PIPELINE_LOG_FORMAT=json
ENTRYPOINT ["pipeline"]
CMD ["worker"]
