"""hps: the Higress plugin server.

A twisted.web file server that hands Higress gateways their WebAssembly plugins
from a tree laid out as ``<root>/<name>/<version>/plugin.wasm``.
"""

__version__ = "0.1.0"
