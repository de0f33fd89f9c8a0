# One image for every leadsync process (check, migrations, web, worker, beat); the compose command picks the role.
# Reproducible: every dependency, the build backend included, comes from requirements/runtime.txt, checked
# against its hash (scripts/lock refreshes it; CONTRIBUTING.md, "Dependencies").
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first, in their own layer: a code change does not reinstall them.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY leadsync leadsync
COPY forms forms
COPY worker worker
COPY storage storage
COPY config config
# --no-deps: nothing beyond the lock; --no-build-isolation: build with the locked setuptools, fetch nothing.
RUN pip install --no-deps --no-build-isolation . \
    && useradd --system --home /app leadsync && mkdir -p /app/var /app/packet && chown leadsync /app/var
USER leadsync
EXPOSE 8000
CMD ["leadsync", "web", "--host", "0.0.0.0", "--port", "8000"]
