"""Errors every layer raises: the package's ground floor, importing nothing of lori.

``ArtifactError`` is raised by the stores (:mod:`lori.artifacts`), the streamed low-rank passes
(:mod:`lori.lowrank.passes`) and the stages alike; it lives here so that none of them imports
another layer for it. :mod:`lori.artifacts.store` re-exports it.
"""


class ArtifactError(RuntimeError):
    """A missing, incomplete or inconsistent artifact; the message names it."""
