"""Full runs over REST with real processes: HTTPS, authentication, a crashed client, plain-torch scoring."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from ._rest_util import Deployment

PLAN = Path(__file__).parent / "plans" / "digits_rest.py"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(**values: str) -> None:
    for key, value in values.items():
        os.environ[key] = value


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    monkeypatch.setenv("THEODEN_TEST_CLIENTS", "3")
    monkeypatch.setenv("THEODEN_TEST_ROUNDS", "3")
    monkeypatch.delenv("THEODEN_TEST_STEPS", raising=False)
    deploy = Deployment(root=tmp_path, clients=["site-1", "site-2", "site-3"])
    yield deploy
    deploy.stop()


class PlainMLP(torch.nn.Module):
    """The client's `mlp` (64 -> 64 -> 10) rebuilt in plain torch, to load the exported weights."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _client_val_sets() -> list[tuple[np.ndarray, np.ndarray]]:
    """Each site's validation split, recomputed from the plan's seeds (digits scaled to [0, 1])."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(7)
    order = rng.permutation(len(y))
    share = int(np.floor(0.8 / 3 * len(y) + 1e-9))
    sets = []
    for part in range(3):
        indices = np.sort(order[part * share : (part + 1) * share])
        local = np.random.default_rng(1).permutation(len(indices))
        n_train = int(np.floor(0.8 * len(indices) + 1e-9))
        n_val = int(np.floor(0.2 * len(indices) + 1e-9))
        sizes = {"train": n_train, "val": n_val}
        for i in range(len(indices) - n_train - n_val):
            sizes[["train", "val"][i % 2]] += 1
        val = np.sort(local[sizes["train"] : sizes["train"] + sizes["val"]])
        chosen = indices[val]
        sets.append((x[chosen], y[chosen]))
    return sets


def test_three_clients_over_https_and_the_final_model_scores_in_plain_torch_as_reported(
    deployment: Deployment,
) -> None:
    # Execute
    deployment.start_server(PLAN)
    for name in deployment.clients:
        deployment.start_client(name)
    assert deployment.wait_server(180) == 0, deployment.log("server")[-3000:]
    for name, proc in deployment.procs.items():
        assert proc.wait(30) == 0, deployment.log(name)[-3000:]
    # Assert: every round aggregated all three clients
    records = deployment.metrics()
    rounds = [r for r in records if r["phase"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["num_clients"] == 3 for r in rounds)
    final = next(r for r in records if r["phase"] == "final_validation")
    # the final global model, loaded in plain torch, scores on each site's validation split as the server reported
    blob = final["model"]
    model = PlainMLP()
    model.load_state_dict(load_file(str(deployment.run_dir / "blobs" / "blobs" / blob[:2] / blob)), strict=True)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in _client_val_sets():
            correct += int((model(torch.from_numpy(x)).argmax(1) == torch.from_numpy(y)).sum())
            total += len(y)
    assert total == final["num_samples"]
    assert correct / total == pytest.approx(final["metrics"]["val/accuracy"], abs=1e-6)
    assert final["metrics"]["val/accuracy"] > 0.6  # it learned (chance is 0.1)
    # the clients' uploads were deleted once their rounds were aggregated: the store keeps the global models
    metas = [json.loads(p.read_text()) for p in (deployment.run_dir / "blobs" / "blobs").glob("*/*.meta.json")]
    assert metas and all(meta["public"] for meta in metas)
    assert {r["model"] for r in rounds} <= {p.name for p in (deployment.run_dir / "blobs" / "blobs").glob("*/*")}


def test_wrong_password_and_foreign_tokens_are_refused(deployment: Deployment) -> None:
    deployment.start_server(PLAN)
    verify = ssl.create_default_context(cafile=str(deployment.pki["ca"]))
    with httpx.Client(base_url=deployment.url, verify=verify, timeout=10) as http:
        wrong = http.post("/api/v1/auth/token", data={"username": "site-1", "password": "not-the-password"})
        assert wrong.status_code == 401
        # a token signed by another server (another secret) is refused
        import jwt

        now = int(time.time())
        foreign = jwt.encode(
            {
                "sub": "site-1",
                "role": "admin",
                "iat": now,
                "exp": now + 600,
                "iss": "theoden",
                "aud": "rest-it",
                "jti": "x",
            },
            "another-servers-secret-that-is-long-enough-1234",
            algorithm="HS256",
        )
        refused = http.post(
            "/api/v1/requests", json={"type": "heartbeat"}, headers={"Authorization": f"Bearer {foreign}"}
        )
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
    # the client transport verifies the server: without the private CA (system trust store only) it refuses
    from theoden_client.transport.rest import RestTransport

    untrusting = RestTransport(deployment.url, username="site-1", password=deployment.passwords["site-1"])
    with pytest.raises(Exception, match="(?i)certificate"):
        untrusting.login()
    untrusting.close()
    trusting = RestTransport(
        deployment.url, username="site-1", password=deployment.passwords["site-1"], ca_file=deployment.pki["ca"]
    )
    assert trusting.login() is not None
    trusting.close()
    # the client command line with a wrong password exits non-zero and says why
    bad = deployment.root / "bad.password"
    bad.write_text("not-the-password")
    proc = deployment.start_client("site-1", password_file=bad)
    assert proc.wait(60) != 0
    assert "401" in deployment.log("site-1") or "password" in deployment.log("site-1").lower()


def test_a_client_killed_mid_round_is_timed_out_and_the_run_finishes_then_it_rejoins(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: rounds long enough to kill a client inside one
    monkeypatch.setenv("THEODEN_TEST_ROUNDS", "6")
    monkeypatch.setenv("THEODEN_TEST_STEPS", "150")
    deployment.start_server(PLAN, "--heartbeat-timeout", "3", "--min-successful-clients", "2")
    for name in deployment.clients:
        deployment.start_client(name)
    # Execute: once round 0 is aggregated, site-3 dies hard (no goodbye, no final status)
    deadline = time.monotonic() + 120
    while not any(r["phase"] == "round" for r in deployment.metrics()):
        assert time.monotonic() < deadline, deployment.log("server")[-3000:]
        time.sleep(0.05)
    os.killpg(deployment.procs["site-3"].pid, signal.SIGKILL)
    deployment.procs["site-3"].wait()
    killed_at = max(r["round"] for r in deployment.metrics() if r["phase"] == "round")
    # wait until a round completes without it, then bring it back
    while not any(r["phase"] == "round" and r["num_clients"] == 2 for r in deployment.metrics()):
        assert time.monotonic() < deadline, deployment.log("server")[-3000:]
        time.sleep(0.1)
    deployment.start_client("site-3")
    # Assert: the run finishes; the round after the kill aggregated the two others; site-3 took part again later
    assert deployment.wait_server(180) == 0, deployment.log("server")[-3000:]
    rounds = [r for r in deployment.metrics() if r["phase"] == "round"]
    assert [r["round"] for r in rounds] == list(range(6))
    after_kill = [r for r in rounds if r["round"] > killed_at]
    assert after_kill[0]["num_clients"] == 2
    assert set(after_kill[0]["clients"]) == {"site-1", "site-2"}
    assert any("site-3" in r["clients"] for r in after_kill[1:]), [sorted(r["clients"]) for r in rounds]
    server_log = deployment.log("server") + (deployment.run_dir / "server.log").read_text()
    assert "site-3" in server_log
