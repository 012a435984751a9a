"""Load generator for the control-plane figure: many simulated clients on raw asyncio HTTP/1.1 keep-alive.

Run as its own process (``python benchmarks/loadgen.py --url URL --secret-file F --run-name R --clients N``).
Each simulated client has its own connection and bearer token (minted with the run's JWT secret by the
operator, so 500 argon2 logins are not part of the figure), registers, then loops: long-poll for a command,
post STARTED, post FINISHED. Closed loop by default (each client sends its next request as soon as the last
one is answered: the server's saturation throughput); with ``--rate R`` the clients are paced to offer R
req/s in all (the latency at a given load). Prints one JSON object with request counts and latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from urllib.parse import urlsplit

from theoden_protocol import (
    CommandResponse,
    CommandStatus,
    ExecutionResponse,
    Exit,
    PullCommand,
    RegisterRequest,
    StatusUpdate,
    codec,
)


class Conn:
    """One keep-alive HTTP/1.1 connection (requests are sequential on it)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None
        assert self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        self.writer.write(head + self.auth + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
            return status, data
        return status, await self.reader.readexactly(length)


async def simulated_client(
    name: str, conn: Conn, args: argparse.Namespace, stats: dict, start_evt: asyncio.Event, stop_at: list[float]
) -> None:
    await conn.open()
    status, body = await conn.post("/api/v1/requests", codec.encode(RegisterRequest(client_version="loadgen")))
    if status != 200:
        raise RuntimeError(f"register {name}: {status} {body[:200]!r}")
    stats["registered"] += 1
    pull = codec.encode(PullCommand(wait=args.wait))
    await start_evt.wait()
    # Paced mode (--rate R): each client sends at most one request per N/R seconds (random phase), so the
    # offered load is R req/s; latency counts from the intended send time (no coordinated omission), and a
    # client that waited for its previous answer (a parked pull) does not owe the slots it missed.
    pace = args.clients / args.rate if args.rate else 0.0
    slot = time.monotonic() + random.uniform(0, pace)
    last = time.monotonic()

    async def next_send() -> float:
        nonlocal slot
        intended = max(slot, last)
        delay = intended - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        slot = intended + pace
        return intended if pace else time.monotonic()

    while time.monotonic() < stop_at[0]:
        t0 = await next_send()
        status, body = await conn.post("/api/v1/requests", pull)
        t1 = last = time.monotonic()
        if status != 200:
            stats["errors"] += 1
            continue
        stats["requests"] += 1
        reply = codec.decode_response(body)
        if not isinstance(reply, CommandResponse) or reply.command is None:
            stats["empty_pulls"] += 1
            stats["pull_lat"].append(t1 - t0)
            continue
        stats["pull_lat"].append(t1 - t0)
        uuid = reply.command.uuid
        if isinstance(reply.command, Exit):
            return
        for st, response in ((CommandStatus.STARTED, None), (CommandStatus.FINISHED, ExecutionResponse(num_samples=1))):
            body = codec.encode(StatusUpdate(client_name=name, command_uuid=uuid, status=st, response=response))
            t0 = await next_send()
            status, answer = await conn.post("/api/v1/status", body)
            t1 = last = time.monotonic()
            if status != 200:
                stats["errors"] += 1
                stats["last_error"] = answer[:300].decode(errors="replace")
                continue
            stats["requests"] += 1
            stats["status_lat"].append(t1 - t0)
        stats["commands"] += 1


async def main_async(args: argparse.Namespace) -> dict:
    from theoden_server.security import TokenIssuer, load_jwt_secret

    issuer = TokenIssuer(
        load_jwt_secret(None, secret_file=Path(args.secret_file)), audience=args.run_name, ttl_seconds=7200
    )
    from theoden_server.security import Principal, Role

    url = urlsplit(args.url)
    names = [f"{args.prefix}{i:04d}" for i in range(args.clients)]
    stats: dict = {
        "registered": 0,
        "requests": 0,
        "errors": 0,
        "empty_pulls": 0,
        "commands": 0,
        "pull_lat": [],
        "status_lat": [],
    }
    start_evt = asyncio.Event()
    stop_at = [float("inf")]
    conns = [
        Conn(url.hostname or "127.0.0.1", url.port or 80, issuer.issue(Principal(name=n, role=Role.CLIENT))[0])
        for n in names
    ]
    tasks = []
    for i, (n, c) in enumerate(zip(names, conns, strict=True)):
        tasks.append(asyncio.create_task(simulated_client(n, c, args, stats, start_evt, stop_at)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    while stats["registered"] < args.clients:
        await asyncio.sleep(0.05)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()  # type: ignore[misc]
    if args.mode == "idle":
        start_evt.set()
        print(json.dumps({"event": "parked"}), flush=True)
        await asyncio.sleep(args.duration)
        return {"registered": stats["registered"]}
    await asyncio.sleep(args.warmup)  # let the first rounds settle
    start_evt.set()
    await asyncio.sleep(args.warmup)
    base_req = stats["requests"]
    base_pull, base_status = len(stats["pull_lat"]), len(stats["status_lat"])
    t0 = time.monotonic()
    stop_at[0] = t0 + args.duration
    print(json.dumps({"event": "measuring"}), flush=True)
    await asyncio.sleep(args.duration)
    elapsed = time.monotonic() - t0
    requests = stats["requests"] - base_req
    pull = sorted(stats["pull_lat"][base_pull:])
    status = sorted(stats["status_lat"][base_status:])
    every = sorted(pull + status)

    def q(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else float("nan")

    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for t in tasks:
        t.cancel()
    return {
        "task_failures": len(failed),
        "first_failure": repr(failed[0].exception()) if failed else None,
        "clients": args.clients,
        "elapsed": elapsed,
        "requests": requests,
        "rps": requests / elapsed,
        "errors": stats["errors"],
        "last_error": stats.get("last_error"),
        "commands": stats["commands"],
        "status_p50": q(status, 50),
        "status_p99": q(status, 99),
        "pull_p50": q(pull, 50),
        "pull_p99": q(pull, 99),
        "all_p50": q(every, 50),
        "all_p99": q(every, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--mode", choices=["busy", "idle"], default="busy")
    parser.add_argument("--rate", type=float, default=0.0, help="offered req/s in all (0: closed loop, no pauses)")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps({"event": "result", **result}), flush=True)


if __name__ == "__main__":
    main()
