"""The one gate every step that changes a destination passes: a dry run records it instead.

A pass describes each write or delete it is about to make (``copy <digest>``, ``write <key> ->
<digest>``, ``purge <url>``, ``delete <key>``) to :meth:`Gate.allows`; in a dry run the step is
added to the report's plan and not made, so ``--dry-run`` shows exactly the steps a real pass
would take and takes none.
"""

from __future__ import annotations

from replicator.report import PassReport


class Gate:
    def __init__(self, report: PassReport, dry_run: bool):
        self.report = report
        self.dry_run = dry_run

    def allows(self, step: str) -> bool:
        """Whether ``step`` may be made now; in a dry run, records it as planned: False."""
        if self.dry_run:
            self.report.plan(step)
        return not self.dry_run
