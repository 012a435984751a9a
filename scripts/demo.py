"""TheODen's main demo (placeholder until the end-to-end demo lands, see issue 6)."""

from __future__ import annotations


def main() -> int:
    """Say what the demo will do."""
    print(
        "TheODen demo — coming soon: a server and 3 clients as separate processes on loopback,\n"
        "the scikit-learn digits split across the clients, FedAvg for 5 rounds with a per-round\n"
        "table and the global model's held-out accuracy. Today: `hatch run test` runs the suite."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
