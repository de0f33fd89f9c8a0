# One image for every leadsync process (web, worker, beat, migrations); the command picks the role.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY leadsync leadsync
COPY forms forms
COPY worker worker
COPY storage storage
COPY config config
RUN pip install . && useradd --system --home /app leadsync && mkdir -p /app/var && chown leadsync /app/var
USER leadsync
EXPOSE 8000
CMD ["leadsync", "web", "--host", "0.0.0.0", "--port", "8000"]
