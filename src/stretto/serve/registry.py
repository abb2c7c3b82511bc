"""The models a server holds: loaded at start by name, or (only inside operator-allowed folders) on first use."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from stretto import checkpoints
from stretto.data.text_tasks import ALL_TASKS, held_out
from stretto.serve.errors import ApiError
from stretto.serve.settings import TEXT_KINDS


class ModelRegistry:
    """Model names -> loaded models; a client may name a loaded model, or a folder under an allowed one."""

    def __init__(self, device: str, allow_dirs: Sequence[str] = ()):
        self.device = device
        self.allow_dirs = [Path(d).resolve() for d in allow_dirs]
        self.models: dict[str, nn.Module] = {}
        self._lock = threading.Lock()  # first-use loads run on the model thread, lookups on the event loop

    def load(self, name: str) -> nn.Module:
        """Load a model now (at start, or a client's allowed folder on first use) and keep it."""
        with self._lock:
            if name not in self.models:
                self.models[name] = checkpoints.load(name, device=self.device)
            return self.models[name]

    async def get(self, name: str, worker) -> nn.Module:
        """The model, loaded on the model thread on first use (a client's allowed folder)."""
        model = self.models.get(name)
        return model if model is not None else await worker.run(self.load, name)

    def kind(self, name: str) -> str:
        model = self.models.get(name)
        return model.kind if model is not None else checkpoints.read_config(checkpoints.resolve(name))["kind"]

    def text_facts(self, name: str) -> dict:
        """For a text model that records its training: the canvas (`gen_length`) and a held-out prompt of its
        first task (`example_prompt`), which the page starts from; {} for other models."""
        if self.kind(name) not in TEXT_KINDS or not (gen_length := checkpoints.trained_gen_length(name)):
            return {}
        facts: dict = {"gen_length": gen_length}
        tasks = [t for t in checkpoints.trained_tasks(name) if t in ALL_TASKS]  # a folder may name tasks we lack
        if tasks:
            facts["example_prompt"] = held_out(1, tasks=tasks[:1])[0].prompt
        return facts

    def names(self, kinds: Sequence[str]) -> list[str]:
        """The loaded models of these kinds, in load order."""
        return [n for n, m in self.models.items() if m.kind in kinds]

    def choose(self, requested: str | None, kinds: Sequence[str], what: str) -> str:
        """The model a request names (or the first loaded one of these kinds); 422 if it may not be used."""
        loaded = self.names(kinds)
        if requested is None:
            if not loaded:
                raise ApiError(422, f"this server has no {what} model loaded (kinds {', '.join(kinds)})", "model")
            return loaded[0]
        if requested not in self.models and not self._allowed(requested):
            where = "; checkpoint folders are refused unless the operator allows them (--allow-model-dir)"
            if self.allow_dirs:
                where = f", or a checkpoint folder under {', '.join(map(str, self.allow_dirs))}"
            raise ApiError(422, f"model {requested!r} is not served; use one of {loaded}{where}", "model")
        try:
            kind = self.kind(requested)
        except (checkpoints.CheckpointError, OSError) as err:
            raise ApiError(422, f"model {requested!r}: {err}", "model") from None
        if kind not in kinds:
            wanted = f"a {what} model ({', '.join(kinds)})"
            raise ApiError(422, f"model {requested!r} is a {kind} model, not {wanted}", "model")
        return requested

    def _allowed(self, requested: str) -> bool:
        path = Path(requested).resolve()
        return any(path.is_relative_to(d) for d in self.allow_dirs) and path.is_dir()
