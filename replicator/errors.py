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
                                    corrupt; nothing was made visible for the tag
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


TAG_ERRORS = (ReplicationError, StorageError, ManifestError, LayoutError)

_KINDS = ((TransientError, "storage_transient"), (AccessDenied, "storage_access"),
          (StorageError, "storage"), (ReplicationError, "source_content"),
          (ManifestError, "manifest"), (LayoutError, "layout"), (BudgetExhausted, "budget"))


def error_kind(error: BaseException) -> str:
    """The kind of ``error`` (see the module docstring)."""
    return next((kind for cls, kind in _KINDS if isinstance(error, cls)), "internal")


def unexpected(error: Exception) -> Exception:
    """An error no layer classified, as a message a report can carry (the trace is logged at
    debug level by the caller)."""
    return RuntimeError(f"unexpected {type(error).__name__}: {error}")
