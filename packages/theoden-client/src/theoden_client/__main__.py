"""``python -m theoden_client``: the same as the ``theoden-client`` command."""

from __future__ import annotations

from theoden_client.cli import main

raise SystemExit(main())
