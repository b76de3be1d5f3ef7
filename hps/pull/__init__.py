"""``hps pull``: fill a plugin tree from OCI registries, verified, pinned and aliased.

``properties`` turns the upstream properties file and the manifest YAML into
entries, ``registry`` fetches one verified module, ``tree`` writes it and its
aliases atomically, ``lock`` records what was pulled, ``cli`` wires them up.
"""
