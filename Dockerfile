# syntax=docker/dockerfile:1
#
# hps: the Higress plugin server image.
#
#   docker build -t hps .
#   docker build --build-arg ALPINE_MIRROR=mirrors.aliyun.com --build-arg USE_LOCAL_PLUGINS=true -t hps .
#   docker build --build-arg PYTHON_IMAGE=python:3.12-slim -t hps .
#   docker build --build-arg PLUGIN_REGISTRY=registry.example.com:5000 -t hps .
#   tools/build-image REGISTRY/plugin-server:TAG     (amd64 + arm64, one index, labels, pushed)
#   docker run --rm -p 8080:8080 --read-only hps
#
# The builder installs hps into a virtualenv and runs `hps pull` to fill the plugin tree; the
# runtime stage only copies the venv and the tree, so it holds no compiler, no pip cache and no
# network credentials. At run time it writes only to its cache directory, and serves without it.
#
# Every step runs on Alpine (upstream's base, the default) and on Debian-based Python images
# (python:3.12-slim, or Debian's own python3): POSIX sh only, and apk only where it exists.

ARG PYTHON_IMAGE=python:3.12-alpine3.21

FROM ${PYTHON_IMAGE} AS builder

SHELL ["/bin/sh", "-eu", "-c"]

# Alpine only. ALPINE_MIRROR is the same switch as upstream's image: a mirror host replacing
# dl-cdn.alpinelinux.org (e.g. mirrors.aliyun.com) for builds far from the CDN. The compiler is
# only used when pip finds no musl wheel for a dependency (new Python, unusual arch); it stays in
# this stage. Alpine keeps one version per release, so pins would only break rebuilds. Debian
# bases need nothing: every dependency has a manylinux wheel.
ARG ALPINE_MIRROR=""
# hadolint ignore=DL3018
RUN if command -v apk >/dev/null; then \
        if [ -n "$ALPINE_MIRROR" ]; then \
            sed -i "s|dl-cdn.alpinelinux.org|${ALPINE_MIRROR}|g" /etc/apk/repositories; \
        fi; \
        apk add --no-cache gcc musl-dev libffi-dev; \
    fi

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/hps
ENV PATH=/opt/hps/bin:$PATH

WORKDIR /src
# Packaging files first, so editing plugins/ does not reinstall hps. The bracket globs make the
# optional files optional: COPY needs at least one match (setup.py) and skips the rest.
COPY setup.py setup.cf[g] pyproject.tom[l] README.m[d] ./
COPY hps/ hps/
COPY twisted/plugins/hps_plugin.py twisted/plugins/
# The Console's plugin list ships inside the package: `hps check`'s default (setup.py copies it).
COPY plugins/console.properties plugins/
# WHEELHOUSE: a directory of the build context holding every wheel hps needs, for the image's
# Python and platform (made where an index is reachable: docs/deploy.md), for builds that
# cannot reach the package index; pip then installs from it alone. Unset, pip uses the index as
# usual and the COPY below only copies setup.py again (Dockerfiles have no conditional COPY).
ARG WHEELHOUSE=""
COPY ${WHEELHOUSE:-setup.py} /tmp/wheelhouse/
# twistd writes twisted/plugins/dropin.cache on first use; build it now, while the tree is
# writable, so the runtime needs no write access. Then prove `twistd hps` is registered, and
# drop the installers from the venv: the runtime installs nothing.
RUN if [ -n "$WHEELHOUSE" ]; then set -- --no-index --find-links /tmp/wheelhouse; fi; \
    pip install --no-cache-dir "$@" . \
    && rm -rf /tmp/wheelhouse \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && twistd hps --help >/dev/null \
    && python -m pip uninstall --yes --quiet pip setuptools wheel

# hps pull fills /srv/plugins with this repository's default inventory (plugins/*.properties).
# PLUGIN_REGISTRY=HOST[:PORT] pulls every reference from that registry instead (an internal
# mirror holding the same repositories), and PLUGIN_NAMESPACE=NS moves them under NS there
# (hps pull --namespace); PLUGIN_PLAIN_HTTP=true talks plain HTTP to it (a lab registry). USE_LOCAL_PLUGINS=true: plugins/<name>/<version>/plugin.wasm in the build context
# win over a download of the same name and version, as upstream. The bundled samples built by
# tools/make_samples.py are test fixtures that do nothing at request time: they are never
# copied, or a gateway could load a no-op under a real plugin's name.
ARG PLUGIN_REGISTRY=""
ARG PLUGIN_NAMESPACE=""
ARG PLUGIN_PLAIN_HTTP=false
ARG USE_LOCAL_PLUGINS=false
COPY plugins/ plugins/
RUN mkdir -p /srv/plugins; \
    set -- --output /srv/plugins; \
    if [ -f plugins/manifest.yaml ]; then set -- "$@" --manifest plugins/manifest.yaml; fi; \
    if [ -f plugins/plugins.lock.json ]; then \
        set -- "$@" --lock plugins/plugins.lock.json --locked; \
    fi; \
    if [ -n "$PLUGIN_REGISTRY" ]; then set -- "$@" --registry "$PLUGIN_REGISTRY"; fi; \
    if [ -n "$PLUGIN_NAMESPACE" ]; then set -- "$@" --namespace "$PLUGIN_NAMESPACE"; fi; \
    if [ "$PLUGIN_PLAIN_HTTP" = "true" ]; then set -- "$@" --plain-http; fi; \
    if [ "$USE_LOCAL_PLUGINS" = "true" ]; then \
        for module in plugins/*/*/plugin.wasm; do \
            [ -f "$module" ] || continue; \
            if grep -q 'hps sample plugin: ' "$module"; then continue; fi; \
            target="/srv/plugins/${module#plugins/}"; \
            mkdir -p "${target%/plugin.wasm}"; \
            cp "$module" "$target"; \
        done; \
        set -- "$@" --use-local; \
    fi; \
    hps pull "$@"; \
    chmod -R a+rX,go-w /srv/plugins; \
    mkdir -m 0700 /var/cache/hps


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="hps" \
      org.opencontainers.image.description="Higress plugin server: serves WebAssembly plugins to Higress gateways"

# Read-only root filesystem: no .pyc writes, logs to stdout unbuffered.
ENV PATH=/opt/hps/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Owned by root and only readable by the server's user: a compromised server cannot alter what
# it serves.
COPY --from=builder /opt/hps /opt/hps
COPY --from=builder /srv/plugins /srv/plugins
# The server's cache_dir (hps/config.py), owned by the server's user, so the image works where
# the whole root is writable but nothing is mounted (the Higress chart's plugin server: no
# volumes, no securityContext). With a read-only root, mount an emptyDir here (deploy/ does);
# without one the server falls back to working without a cache.
COPY --from=builder --chown=10001:10001 /var/cache/hps /tmp/hps-cache

# A fixed numeric UID, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /srv
EXPOSE 8080

# python, not curl: the runtime image has no curl, and this needs nothing installed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]

# Exec form: twistd is PID 1 and gets SIGTERM, so it drains. `--pidfile=` writes no pid file.
# Arguments after `hps` can be replaced at `docker run` (e.g. `--config /etc/hps/hps.yaml`).
ENTRYPOINT ["twistd", "-n", "--pidfile=", "hps"]
CMD ["--root", "/srv/plugins", "--listen", "tcp:8080"]

# Provenance, filled by tools/build-image (docs/deploy.md): the source, its commit and version,
# when it was built, and the SHA-256 of the inventory the plugin tree was pulled from. Last, so
# a new build time reuses every layer above.
ARG IMAGE_SOURCE=""
ARG IMAGE_REVISION=""
ARG IMAGE_VERSION=""
ARG IMAGE_CREATED=""
ARG PLUGIN_INVENTORY_SHA256=""
LABEL org.opencontainers.image.source="${IMAGE_SOURCE}" \
      org.opencontainers.image.revision="${IMAGE_REVISION}" \
      org.opencontainers.image.version="${IMAGE_VERSION}" \
      org.opencontainers.image.created="${IMAGE_CREATED}" \
      io.higress.plugin-inventory-sha256="${PLUGIN_INVENTORY_SHA256}"
