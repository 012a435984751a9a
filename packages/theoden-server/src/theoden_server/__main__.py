"""``python -m theoden_server``: the same as the ``theoden-server`` command."""

from __future__ import annotations

from theoden_server.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
