"""What can go wrong in a pass, classified by what the engine does about it.

Everything a tag's replication raises falls in one of these (``TAG_ERRORS``), and each has a
stable kind for reports and metrics (:func:`error_kind`)::

    drivers.errors.StorageError     I/O with a region failed (the driver already retried)
    ├── TransientError              "storage_transient": worth trying again later; the tag
    │                               fails this pass and is retried with back-off
    ├── AccessDenied                "storage_access": fatal for this destination until its
    │                               credentials change (a server-side copy falls back to
    │                               streaming first)
    └── (others)                    "storage"
    ReplicationError                "source_content": the source's content is missing or
    │                               corrupt; nothing was made visible for the tag
    ├── Unsigned                    "unsigned": the policy requires a signature the source
    │                               does not hold for the digest (or that fails to verify);
    │                               held back, retried once a signature appears
    └── ArtifactFailed              the kind of its ``cause``: an artifact of the image
                                    failed, so the image's tag was not moved
    ManifestError                   "manifest": a manifest that cannot be replicated
    LayoutError                     "layout": a name, tag, digest or link breaking the grammar
    BudgetExhausted                 "budget": the destination's egress budget is spent for
                                    this period; the tag waits, pending, without back-off
    (anything else)                 "internal": a defect; it fails its tag (or its
                                    destination's pass), never the run

Kinds are decided by class membership, never by class names.
"""

from __future__ import annotations

from drivers.errors import AccessDenied, StorageError, TransientError
from replicator.layout import LayoutError
from replicator.manifests import ManifestError


class ReplicationError(Exception):
    """Content at the source cannot be replicated as it is (missing or corrupt)."""


class BudgetExhausted(Exception):
    """A copy was not started: the destination's egress budget for the period is spent."""


class Unsigned(ReplicationError):
    """The source holds no signature for the digest that verifies against the policy's keys."""


class ArtifactFailed(ReplicationError):
    """An artifact (named in the message) of the tag's image could not be replicated."""

    def __init__(self, message: str, cause: Exception):
        super().__init__(message)
        self.cause = cause


TAG_ERRORS = (ReplicationError, StorageError, ManifestError, LayoutError)

_KINDS = ((TransientError, "storage_transient"), (AccessDenied, "storage_access"),
          (StorageError, "storage"), (Unsigned, "unsigned"), (ReplicationError, "source_content"),
          (ManifestError, "manifest"), (LayoutError, "layout"), (BudgetExhausted, "budget"))


def error_kind(error: BaseException) -> str:
    """The kind of ``error`` (see the module docstring)."""
    if isinstance(error, ArtifactFailed):
        return error_kind(error.cause)
    return next((kind for cls, kind in _KINDS if isinstance(error, cls)), "internal")


def unexpected(error: Exception) -> Exception:
    """An error no layer classified, as a message a report can carry (the trace is logged at
    debug level by the caller)."""
    return RuntimeError(f"unexpected {type(error).__name__}: {error}")
