# syntax=docker/dockerfile:1
# The Tidebase server image: one image, one role per container (web, worker, beat, migrate, ...).
#
#   docker build -t tidebase-django:0.1.0 .
#   docker run --rm --env-file .env -e DATABASE_URL=... tidebase-django:0.1.0 migrate
#   docker run -d --env-file .env -e DATABASE_URL=... -e CELERY_BROKER_URL=... -p 7373:7373 tidebase-django:0.1.0 web
#
# Thin on purpose: the one build step is deploy/build.sh and the entry point deploy/entrypoint.sh,
# the same two scripts scripts/deploy_smoke.sh runs in CI. No image is built in CI (docs/deploy.md,
# "What was exercised").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
COPY . /src
RUN PIP_NO_CACHE_DIR=1 bash /src/deploy/build.sh /src /opt/tidebase

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/tidebase /opt/tidebase
ENV PATH=/opt/tidebase/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DJANGO_STATIC_ROOT=/opt/tidebase/staticfiles \
    TIDEBASE_DATA_DIR=/tmp/tidebase \
    TIDEBASE_HOST=0.0.0.0 \
    PORT=7373
# Any unprivileged uid works: nothing under /opt/tidebase is written at run time.
USER 65532:65532
EXPOSE 7373
ENTRYPOINT ["/opt/tidebase/bin/tidebase-entrypoint"]
CMD ["web"]
