"""Entry script of a client process in the integration tests: the real `Client` over RabbitMQ or REST.

Usage: python _client_main.py (--rabbitmq URL | --rest URL --username NAME --password-env VAR) [--poll-wait S]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rabbitmq")
    parser.add_argument("--rest")
    parser.add_argument("--username")
    parser.add_argument("--password-env", default="THEODEN_TEST_PASSWORD")
    parser.add_argument("--poll-wait", type=float, default=5.0)
    parser.add_argument("--data-root", default=".")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("pika").setLevel(logging.WARNING)

    from theoden_client import Backoff, Client
    from theoden_client.transport.base import Transport

    transport: Transport
    if args.rabbitmq:
        from theoden_client.transport.amqp import RabbitMQTransport

        transport = RabbitMQTransport(args.rabbitmq, timeout=15.0, heartbeat=10)
    else:
        from theoden_client.transport.rest import RestTransport

        transport = RestTransport(
            args.rest, username=args.username, password=os.environ[args.password_env], timeout=15.0
        )
    client = Client(
        transport,
        data_root=args.data_root,
        progress="off",
        poll_wait=args.poll_wait,
        backoff=Backoff(initial=0.2, maximum=2.0, rng=random.Random()),
    )
    with client:
        reason = client.run(handle_signals=True)
    print(f"client exited: {reason}", flush=True)
    return 0 if reason is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
