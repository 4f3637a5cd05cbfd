# qrt serve in a container: docker build -t qrt-serve . && docker run -p 8000:8000 qrt-serve
# Another model: docker build --build-arg MODEL=path/in/context/model.onnx -t my-model .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NUMBA_CACHE_DIR=/home/qrt/.numba-cache

RUN useradd --create-home --uid 10001 qrt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY qrt ./qrt
COPY calibration ./calibration
RUN pip install ".[serve]"

ARG MODEL=qrt/data/digits_cnn.onnx
COPY ${MODEL} /models/model.onnx

USER qrt
# Run the model once so Numba compiles its kernels into NUMBA_CACHE_DIR now, not on the first request.
# (Numba's cache is keyed by CPU: a host with another CPU model recompiles once at start-up.)
RUN qrt run /models/model.onnx > /dev/null

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["qrt", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "model=/models/model.onnx"]
