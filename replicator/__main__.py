"""The ``replicator`` command (``python -m replicator``, and the installed script).

Libraries the replicator uses import some packages whenever they happen to be installed, to
support types and frameworks the replicator never meets: sqlite-utils pandas and numpy (for
their values), httpcore trio (for async code). The command keeps them from loading, so that
its start-up loads only what a run uses; code importing the replicator as a library is left
alone.
"""

import sys

NEVER_USED = ("numpy", "pandas", "trio")


def main() -> int:
    """Run the command line (:func:`replicator.cli.main`); its exit status."""
    for name in NEVER_USED:
        sys.modules.setdefault(name, None)
    from replicator.cli import main as cli_main
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
