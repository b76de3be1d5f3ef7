"""WasmPlugin documents as the cluster holds them, for ``hps check``, ``--rewrite`` and
``hps pull --wasmplugins``.

Two shapes: the Higress docs' hand-written example (``request-block`` with ``defaultConfig``
and ``matchRules``), and what the Console creates (labels, annotations, ``failStrategy``,
``phase``, ``priority``, no ``sha256``), each as ``kubectl get wasmplugins -A -o yaml``
dumps it (a ``List`` whose items carry server-set metadata), as multi-document YAML, or as
one object.
"""

from __future__ import annotations

from typing import Any

import yaml

API = "extensions.higress.io/v1alpha1"


def docs_example(name: str, url: str, namespace: str = "higress-system",
                 sha256: str | None = None) -> dict[str, Any]:
    """Shaped like the Higress docs' ``request-block`` WasmPlugin."""
    spec: dict[str, Any] = {
        "defaultConfig": {"block_urls": ["swagger.html"]},
        "matchRules": [
            {"ingress": ["default/foo"], "config": {"block_bodies": ["hello world"]}},
            {"domain": ["*.example.com", "test.com"],
             "config": {"block_urls": ["swagger.html"], "block_headers": ["example-key"]}},
        ],
        "url": url,
    }
    if sha256:
        spec["sha256"] = sha256
    return {"apiVersion": API, "kind": "WasmPlugin",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def console_made(name: str, version: str, url: str, sha256: str | None = None,
                 resource: str | None = None) -> dict[str, Any]:
    """Shaped like a WasmPlugin the Higress Console creates for a built-in plugin."""
    spec: dict[str, Any] = {
        "defaultConfig": {"consumers": [{"name": "consumer1", "credentials": ["key1"]}]},
        "defaultConfigDisable": False,
        "failStrategy": "FAIL_OPEN",
        "matchRules": [{"config": {"allow": ["consumer1"]}, "configDisable": False,
                        "ingress": ["default/route-a"]}],
        "phase": "AUTHN",
        "priority": 310,
        "url": url,
    }
    if sha256:
        spec["sha256"] = sha256
    return {
        "apiVersion": API,
        "kind": "WasmPlugin",
        "metadata": {
            "annotations": {"higress.io/wasm-plugin-title": name.replace("-", " ").title()},
            "labels": {
                "higress.io/resource-definer": "higress",
                "higress.io/wasm-plugin-built-in": "true",
                "higress.io/wasm-plugin-category": "auth",
                "higress.io/wasm-plugin-name": name,
                "higress.io/wasm-plugin-version": version,
            },
            "name": resource or f"{name}-{version}".replace(".", "-"),
            "namespace": "higress-system",
        },
        "spec": spec,
    }


def as_stored(item: dict[str, Any], number: int) -> dict[str, Any]:
    """``item`` with the metadata the API server adds, as ``kubectl get -o yaml`` shows it."""
    metadata = {**item["metadata"], "creationTimestamp": "2026-11-02T08:15:00Z",
                "generation": 1, "resourceVersion": str(100200 + number),
                "uid": f"6c1f4e2a-0000-4000-8000-{number:012d}"}
    return {**item, "metadata": dict(sorted(metadata.items()))}


def kubectl_list(items: list[dict[str, Any]]) -> str:
    """``kubectl get wasmplugins -A -o yaml``."""
    stored = [as_stored(item, number) for number, item in enumerate(items, 1)]
    return yaml.safe_dump({"apiVersion": "v1", "items": stored, "kind": "List",
                           "metadata": {"resourceVersion": ""}}, sort_keys=False)


def multi_document(items: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(items, sort_keys=False, explicit_start=True)


def single(item: dict[str, Any]) -> str:
    return yaml.safe_dump(item, sort_keys=False)
