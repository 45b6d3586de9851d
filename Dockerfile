# reimagine: one image for API replicas (`serve --workers 0`) and workers (`worker --device cuda:0`).
# Minimal and not built where it was written (no Docker engine there); docs/deployment.md has the tested commands.
FROM python:3.11-slim

# CPU torch by default; GPU workers: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX}" \
 && pip install --no-cache-dir ".[worker,postgres,s3]"

ENV REIMAGINE_DATA_DIR=/data \
    REIMAGINE_HOST=0.0.0.0 \
    REIMAGINE_PORT=8000
VOLUME /data
EXPOSE 8000
# SIGTERM drains a worker: its job gets --drain-grace-s (25 s by default) to finish, else goes back to the queue;
# for long jobs raise it and give `docker stop -t` a little more (deploy/compose.yaml: 650 and 660 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["reimagine"]
CMD ["serve", "--workers", "0"]
