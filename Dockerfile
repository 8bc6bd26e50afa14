# loopdesk image: the same install as scripts/setup.sh, then the `loopdesk` command.
FROM python:3.11-slim-bookworm
WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    LOOPDESK_DATA_DIR=/data \
    PIP_NO_CACHE_DIR=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY loopdesk loopdesk
COPY feedback_store feedback_store
COPY bot bot
COPY trainer trainer
COPY sim sim
COPY harness harness
COPY scripts scripts
RUN pip install .
VOLUME ["/data"]
EXPOSE 8000
# gunicorn, one worker process (it holds the model) with request threads: `loopdesk serve --help`.
CMD ["loopdesk", "serve", "--host", "0.0.0.0", "--port", "8000"]
