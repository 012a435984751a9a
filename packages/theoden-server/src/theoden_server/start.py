"""`start_server`: build a `Server` with its interfaces and run it until the plan is done."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from theoden_server.security import TokenIssuer, UsersFile, is_loopback, load_jwt_secret
from theoden_server.storage import DEFAULT_MAX_BLOB_BYTES, BlobStore

if TYPE_CHECKING:
    from litestar import Litestar

    from theoden_server.server import Server

__all__ = ["ServerEndpoint", "build_server", "start_server"]

logger = logging.getLogger("theoden.server")


class ServerEndpoint(msgspec.Struct, kw_only=True):
    """Where a started server listens; written to ``<run_dir>/endpoint.json``."""

    url: str
    host: str
    port: int
    tls: bool
    pid: int


@dataclass(kw_only=True)
class BuiltServer:
    """A server and its REST app, not yet running (see `build_server`)."""

    server: Server
    app: Litestar
    users: UsersFile
    tokens: TokenIssuer
    store: BlobStore
    run_dir: Path


def _resolve_users(users: str | os.PathLike[str] | UsersFile | None, run_dir: Path) -> UsersFile:
    if isinstance(users, UsersFile):
        return users
    path = Path(users) if users is not None else run_dir / "users.toml"
    if not path.exists():
        raise FileNotFoundError(
            f"users file {path} does not exist: create it with `theoden-server users add NAME --users {path}`"
        )
    return UsersFile.load(path)


def _with_defaults(given: list[Any], defaults: list[Any]) -> list[Any]:
    """Add each default watcher whose type the user did not already supply."""
    given_types = {type(w) for w in given}
    return [*(d for d in defaults if type(d) not in given_types), *given]


def build_server(
    instructions: Sequence[Any],
    run_name: str = "theoden-run",
    *,
    permanent_conditions: Sequence[Any] | None = None,
    open_distribution: Any | None = None,
    watchers: Sequence[Any] | None = None,
    watcher: Sequence[Any] | None = None,
    users: str | os.PathLike[str] | UsersFile | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    jwt_secret: str | bytes | None = None,
    jwt_secret_file: str | os.PathLike[str] | None = None,
    token_ttl: int = 3600,
    heartbeat_timeout: float = 30.0,
    heartbeat_interval: float = 5.0,
    max_wait: float = 30.0,
    min_successful_clients: int | None = None,
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    default_watchers: bool = True,
    protection: Any | None = None,
    keep_uploads: bool = False,
    keep_global_models: int | None = None,
) -> BuiltServer:
    """Create the run directory, store, security and `Server` with its REST app, without serving.

    With ``default_watchers`` the run collects metrics (``metrics.jsonl``), tracks and saves the best
    model (``best_model.safetensors``) and logs its progress, besides any watchers given.
    """
    from theoden_server.rest import RestSettings, create_app
    from theoden_server.server import Server
    from theoden_server.watchers import BestModelDetector, BestModelSaver, LoggingWatcher, MetricCollector

    # clients must beat well inside the timeout, or a busy client would be declared dead
    heartbeat_interval = min(heartbeat_interval, heartbeat_timeout / 3)
    directory = Path(run_dir) if run_dir is not None else Path("runs") / run_name
    directory.mkdir(parents=True, exist_ok=True)
    store = BlobStore(directory / "blobs", max_blob_bytes=max_blob_bytes)
    users_file = _resolve_users(users, directory)
    secret_file = Path(jwt_secret_file) if jwt_secret_file is not None else directory / "jwt-secret"
    tokens = TokenIssuer(load_jwt_secret(jwt_secret, secret_file=secret_file), audience=run_name, ttl_seconds=token_ttl)
    server = Server(
        run_name=run_name,
        instructions=list(instructions),
        store=store,
        run_dir=directory,
        permanent_conditions=list(permanent_conditions or ()),
        open_distribution=open_distribution,
        watchers=_with_defaults(
            [*(watchers or ()), *(watcher or ())],
            [
                MetricCollector(),
                BestModelDetector.for_plan(instructions, open_distribution),
                BestModelSaver(),
                LoggingWatcher(),
            ]
            if default_watchers
            else [],
        ),
        heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=heartbeat_interval,
        max_wait=max_wait,
        min_successful_clients=min_successful_clients,
        protection=protection,
        keep_uploads=keep_uploads,
        keep_global_models=keep_global_models,
    )
    app = create_app(server, users=users_file, tokens=tokens, store=store, settings=RestSettings(max_wait=max_wait))
    return BuiltServer(server=server, app=app, users=users_file, tokens=tokens, store=store, run_dir=directory)


def _log_to_run_dir(run_dir: Path, level: int) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    return handler


def _note_stop_signal(signum: int, _frame: object) -> None:
    logger.info("received %s: stopped", signal.Signals(signum).name)


def start_server(
    instructions: Sequence[Any],
    run_name: str = "theoden-run",
    permanent_conditions: Sequence[Any] | None = None,
    open_distribution: Any | None = None,
    watchers: Sequence[Any] | None = None,
    *,
    watcher: Sequence[Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    users: str | os.PathLike[str] | UsersFile | None = None,
    ssl_certfile: str | os.PathLike[str] | None = None,
    ssl_keyfile: str | os.PathLike[str] | None = None,
    rabbitmq: str | None = None,
    rabbitmq_ca_file: str | os.PathLike[str] | None = None,
    rabbitmq_admin_users: Sequence[str] = (),
    run_dir: str | os.PathLike[str] | None = None,
    exit_on_finish: bool = True,
    finish_grace: float = 3.0,
    jwt_secret: str | bytes | None = None,
    jwt_secret_file: str | os.PathLike[str] | None = None,
    token_ttl: int = 3600,
    heartbeat_timeout: float = 30.0,
    heartbeat_interval: float = 5.0,
    max_wait: float = 30.0,
    min_successful_clients: int | None = None,
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    protection: Any | None = None,
    insecure_http: bool = False,
    log_level: str = "info",
    keep_uploads: bool = False,
    keep_global_models: int | None = None,
) -> Server:
    """Run a TheODen server until its plan is done (``exit_on_finish``) or SIGINT/SIGTERM.

    Args:
        instructions: the plan: conditions, distributions, actions and bundles, in order.
        run_name: the run's name (also the token audience and default run directory name).
        permanent_conditions: conditions checked before anything is handed out.
        open_distribution: commands every newly joining client gets first.
        watchers: extra watchers, besides the built-in metric collector, best-model saver and logger.
        watcher: the same as ``watchers`` (the name earlier TheODen versions used); both may be given.
        host: interface to listen on (``0.0.0.0`` for all).
        port: TCP port (``0`` picks a free one; see ``<run_dir>/endpoint.json``).
        users: the users file (default ``<run_dir>/users.toml``).
        ssl_certfile: PEM certificate chain: serve HTTPS.
        ssl_keyfile: PEM private key of the certificate.
        rabbitmq: AMQP URL to also serve clients through a RabbitMQ broker.
        rabbitmq_ca_file: CA bundle that signed an ``amqps://`` broker's certificate (default: system CAs).
        rabbitmq_admin_users: broker users (operators' tools, not clients) that may read any blob.
        run_dir: where everything the run produces lands (default ``runs/<run_name>``).
        exit_on_finish: stop serving once the plan is done (after ``finish_grace`` seconds).
        finish_grace: seconds to keep serving after the plan is done, so clients get their exit.
        jwt_secret: the token signing secret (else ``THEODEN_JWT_SECRET`` or ``jwt_secret_file``).
        jwt_secret_file: file holding the secret, created (mode 0600) if missing, so tokens survive restarts.
        token_ttl: token lifetime in seconds.
        heartbeat_timeout: seconds of silence after which a client is offline and its commands fail.
        heartbeat_interval: how often clients are asked to send a heartbeat.
        max_wait: longest a pull request is held open.
        min_successful_clients: fewest successful clients a round needs to aggregate.
        max_blob_bytes: largest upload accepted (413 above).
        protection: which request types the server accepts at all (`OperationWhitelist` / `OperationBlacklist`).
        insecure_http: allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
        log_level: uvicorn and server log level.
        keep_uploads: keep the clients' uploads after their round (default: deleted once aggregated;
            the global models are kept either way).
        keep_global_models: keep only the latest N (>= 2) global models in the store (default: all,
            one per round); the best model is kept apart in the run directory either way.

    Returns:
        The `Server`, after it stopped (inspect ``failed`` and the run directory).
    """
    import torch
    import uvicorn

    # The server's tensor work (folding uploads, writing the global model) is memory-bound; torch's
    # default thread pool only adds a busy OpenMP thread competing with the request loop
    # (benchmarks/RESULTS.md, figure 1). THEODEN_TORCH_THREADS overrides.
    torch.set_num_threads(max(1, int(os.environ.get("THEODEN_TORCH_THREADS", "1"))))
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile")
    if rabbitmq_ca_file is not None and not Path(rabbitmq_ca_file).is_file():
        raise ValueError(f"RabbitMQ CA bundle {rabbitmq_ca_file} not found")
    if ssl_certfile is None and not insecure_http and not is_loopback(host):
        raise ValueError(
            f"refusing plain HTTP on {host}: passwords and tokens would travel unencrypted; give ssl_certfile and"
            " ssl_keyfile (see `theoden-server certs create`), or insecure_http=True behind a TLS-terminating proxy"
        )
    built = build_server(
        instructions,
        run_name,
        permanent_conditions=permanent_conditions,
        open_distribution=open_distribution,
        watchers=watchers,
        watcher=watcher,
        users=users,
        run_dir=run_dir,
        jwt_secret=jwt_secret,
        jwt_secret_file=jwt_secret_file,
        token_ttl=token_ttl,
        heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=heartbeat_interval,
        max_wait=max_wait,
        min_successful_clients=min_successful_clients,
        max_blob_bytes=max_blob_bytes,
        protection=protection,
        keep_uploads=keep_uploads,
        keep_global_models=keep_global_models,
    )
    level = getattr(logging, log_level.upper(), logging.INFO)
    handler = _log_to_run_dir(built.run_dir, level)
    server = built.server

    sock: socket.socket | None = None
    amqp = None
    frozen = False
    try:  # whatever fails on the way (a port in use, a broker setting) leaves nothing running behind
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        bound_port = sock.getsockname()[1]
        tls = ssl_certfile is not None
        url = f"{'https' if tls else 'http'}://{host if ':' not in host else f'[{host}]'}:{bound_port}"
        config = uvicorn.Config(
            built.app,
            ssl_certfile=os.fspath(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=os.fspath(ssl_keyfile) if ssl_keyfile else None,
            log_level=log_level,
            lifespan="on",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=75,
            backlog=2048,
            access_log=False,
        )
        web = uvicorn.Server(config)

        if rabbitmq is not None:
            from theoden_server.messaging import RabbitMQInterface

            amqp = RabbitMQInterface(server, url=rabbitmq, ca_file=rabbitmq_ca_file, admin_users=rabbitmq_admin_users)

        def stop_when_finished() -> None:
            server.finished.wait()
            if server.failed:
                logger.error("run %s failed: %s", run_name, server.failed)
            else:
                logger.info("run %s finished; stopping in %.1f s", run_name, finish_grace)
            time.sleep(finish_grace)
            web.should_exit = True

        server.start()
        if amqp is not None:
            amqp.start()
        if exit_on_finish:
            threading.Thread(target=stop_when_finished, name="theoden-finish", daemon=True).start()
        endpoint = ServerEndpoint(url=url, host=host, port=bound_port, tls=tls, pid=os.getpid())
        (built.run_dir / "endpoint.json").write_bytes(msgspec.json.encode(endpoint))
        logger.info("serving run %s at %s (run directory %s)", run_name, url, built.run_dir)
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the
            # previous handler; a quiet handler turns a requested stop into a normal exit (code 0).
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, _note_stop_signal)
        # Everything alive now (the libraries, the plan, the app) lives as long as the server: moving it out of
        # the cyclic collector's reach turns its full collections from ~150 ms pauses into short ones.
        gc.collect()  # what is garbage already is freed, not frozen
        gc.freeze()
        frozen = True
        web.run(sockets=[sock])
    finally:
        if frozen:
            gc.unfreeze()
        if amqp is not None:
            with contextlib.suppress(Exception):
                amqp.stop()
        server.stop()
        if sock is not None:
            sock.close()
        logging.getLogger().removeHandler(handler)
        handler.close()
        logger.info("server stopped; results are in %s", built.run_dir)
    return server
