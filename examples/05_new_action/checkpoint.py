"""A user action: save the current global model as a checkpoint in the run directory.

Actions run on the server's worker thread, so a slow copy never holds up a client's request.
"""

from __future__ import annotations

import json
import logging

from theoden_server import Action, Server

logger = logging.getLogger("theoden_server.run")


class SaveCheckpoint(Action):
    """Copy the global model to ``<run_dir>/checkpoints/<label>.safetensors`` and list it in ``index.json``.

    Args:
        label: File name of the checkpoint, e.g. ``round-003``.
        round: The round it belongs to (recorded in the index).
    """

    def __init__(self, label: str, *, round: int | None = None, name: str | None = None) -> None:
        super().__init__(name=name or f"SaveCheckpoint[{label}]")
        self.label = label
        self.round = round

    def perform(self, server: Server) -> None:
        """Copy the model; an exception here fails the run loudly (a run you cannot resume is not worth continuing)."""
        model = server.global_model
        if model is None:
            raise RuntimeError("there is no global model to checkpoint yet; initialise one first")
        folder = server.run_dir / "checkpoints"
        folder.mkdir(exist_ok=True)
        path = folder / f"{self.label}.safetensors"
        server.store.copy_to(model.id, path)
        index_file = folder / "index.json"
        index = json.loads(index_file.read_text()) if index_file.exists() else []
        index.append({"label": self.label, "round": self.round, "model": model.id, "file": path.name})
        index_file.write_text(json.dumps(index, indent=2))
        logger.info("checkpoint %s saved (global model %s)", path.name, model.id[:12])
