# The wsop image: one entrypoint, `wsop`; the role is the command line
# (`wsop lb`, `wsop sidecar`, `wsop webhook serve`, `wsop rebalance --watch`; see
# `wsop manifests`).
#
#   elsewhere (a Docker engine):  docker build -t localhost/wsop:0.1.0 .
#   on a machine without one:     make image   (buildah builds this same file on a
#                                 Debian base made with mmdebstrap: image/build.sh)
#
# BASE must provide python3 (>= 3.11) with the venv module, useradd and CA certificates;
# both stages use the same BASE, so the virtual environment built in the first runs
# unchanged in the second.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/wsop
# Dependencies first, from pyproject.toml alone: this layer is reused until they change.
# (An empty package stands in for wsop, in a directory of its own: setuptools leaves a
# build/ directory behind that a second build in the same place would reuse.)
COPY pyproject.toml README.md constraints.txt /deps/
RUN mkdir /deps/wsop && touch /deps/wsop/__init__.py \
 && /opt/wsop/bin/pip install -c /deps/constraints.txt /deps \
 && /opt/wsop/bin/pip uninstall --yes wsop \
 && rm -rf /deps
COPY pyproject.toml README.md /src/
COPY wsop /src/wsop
# Every dependency ships a wheel for CPython 3.11 on x86_64 and aarch64, so nothing is
# compiled. Elsewhere, add build-essential to *this* stage only.
RUN /opt/wsop/bin/pip install --no-deps /src \
 && /opt/wsop/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/wsop/bin/wsop --version

FROM ${BASE}
# No compiler, no pip in the venv, no source tree: the venv and a user, nothing else.
COPY --from=build /opt/wsop /opt/wsop
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin wsop
ENV PATH=/opt/wsop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WSOP_STATE_DIR=/tmp/wsop \
    MPLCONFIGDIR=/tmp/matplotlib
# Numeric, so that Kubernetes can check runAsNonRoot (a name cannot be checked).
USER 10001:10001
WORKDIR /tmp
# LB, sidecar, webhook (HTTPS), rebalancer metrics
EXPOSE 8765 9100 8443 9102
# No HEALTHCHECK: the health port depends on the role (LB 8765, sidecar 9100, webhook
# 8443 over HTTPS, rebalancer 9102), the OCI image format has no place for one, and
# Kubernetes ignores it anyway. The probes live in the manifests (`wsop manifests`):
# httpGet /healthz on the role's named port. With plain docker:
#   docker run --health-cmd 'python3 -c "import urllib.request as u; u.urlopen(\"http://127.0.0.1:9100/healthz\")"' …
ENTRYPOINT ["wsop"]
CMD ["--help"]
