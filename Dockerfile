# kmsd serve: the same install as the README, without the dev and test extras.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KMSD_LISTEN=0.0.0.0:8700

WORKDIR /opt/kmsd
COPY pyproject.toml README.md ./
COPY kmsd ./kmsd
COPY kmsagent ./kmsagent
COPY sql ./sql
RUN pip install './[server]' \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kmsd

USER 10001
EXPOSE 8700
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8700/healthz', timeout=2)"]
ENTRYPOINT ["kmsd"]
CMD ["serve"]
