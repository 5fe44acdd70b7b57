"""Content-addressed artifact cache: trained models, triggers, results.

An artifact is a flat dict whose values are tensors or JSON-able values. It is stored as one
safetensors file (tensors as tensors; everything else as JSON in the header), named by a hash of
its *kind*, the *fields that determine it* and the package version. Consequences:

- notebook 06 finds the models of notebook 01 by asking for them with the same fields;
- a write is atomic (temporary file, fsync, rename), so an interrupted run leaves no half file;
- a truncated, corrupted or mismatched file is detected (safetensors' own bounds checks, a
  SHA-256 of the content, the stored key) and recomputed, never loaded;
- nothing is unpickled: loading cannot run code.

Provenance (wall time, device, date) is stored beside the value in ``info``, never in the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .atomic import atomic_path
from .paths import cache_dir

Artifact = dict[str, Any]
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def canonical(value: Any) -> Any:
    """A JSON-able canonical form of key fields (dataclasses, tuples and paths included)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.compare}
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cache key field {value!r} of type {type(value).__name__} is not JSON-able; "
        "allowed: dataclasses, dicts, lists, tuples, str, int, float, bool, None, Path"
    )


def _digest(tensors: dict[str, torch.Tensor], payload: str) -> str:
    sha = hashlib.sha256(payload.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        sha.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        sha.update(t.view(-1).view(torch.uint8).numpy())
    return sha.hexdigest()


@dataclass
class CacheEvent:
    kind: str
    key: str
    hit: bool
    seconds: float


@dataclass
class Cache:
    """The cache rooted at ``root``; see the module docstring.

    Example:
        >>> cache = Cache.at(None)          # CACHE_DIR, else $TSBD_CACHE_DIR, else .cache/
        >>> value = cache.get_or_compute("result", {"attack": "badnets", "seed": 0}, lambda: {"asr": 0.99})
    """

    root: Path
    version: str = __version__
    events: list[CacheEvent] = field(default_factory=list)

    @classmethod
    def at(cls, explicit: str | os.PathLike | None = None) -> Cache:
        return cls(cache_dir(explicit))

    def key(self, kind: str, fields: Any) -> str:
        if not _KIND.match(kind):
            raise ValueError(f"cache kind {kind!r} must be lower-case letters, digits, '-' or '_'")
        text = json.dumps({"kind": kind, "version": self.version, "fields": canonical(fields)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, kind: str, fields: Any) -> Path:
        return self.root / kind / f"{self.key(kind, fields)}.safetensors"

    def load(self, kind: str, fields: Any) -> tuple[Artifact, dict[str, Any]] | None:
        """The stored value and its info, or None when absent or unreadable (then it is removed)."""
        path = self.path(kind, fields)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
            payload = meta["tsbd.json"]
            if meta.get("tsbd.key") != path.stem or meta.get("tsbd.kind") != kind:
                raise ValueError("the stored key does not match the file name")
            if _digest(tensors, payload) != meta["tsbd.digest"]:
                raise ValueError("the content does not match its checksum")
            value: Artifact = {**json.loads(payload), **tensors}
            return value, json.loads(meta.get("tsbd.info", "{}"))
        except Exception as err:  # truncated, corrupted, foreign: never trust it
            warnings.warn(f"cache entry {path} is unreadable ({type(err).__name__}: {err}); recomputing", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def store(self, kind: str, fields: Any, value: Artifact, info: dict[str, Any] | None = None) -> Path:
        """Write ``value`` atomically; return its path."""
        tensors = {
            k: v.detach().to("cpu").contiguous().clone() for k, v in value.items() if isinstance(v, torch.Tensor)
        }
        rest = {k: v for k, v in value.items() if not isinstance(v, torch.Tensor)}
        payload = json.dumps(rest, sort_keys=True)
        path = self.path(kind, fields)
        meta = {
            "tsbd.kind": kind,
            "tsbd.key": path.stem,
            "tsbd.json": payload,
            "tsbd.fields": json.dumps(canonical(fields), sort_keys=True),
            "tsbd.digest": _digest(tensors, payload),
            "tsbd.info": json.dumps(info or {}, sort_keys=True),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def get_or_compute(
        self, kind: str, fields: Any, compute: Callable[[], Artifact], info: Callable[[], dict[str, Any]] | None = None
    ) -> Artifact:
        """The cached value for (kind, fields), computing and storing it on a miss.

        ``compute`` returns a flat dict of tensors and JSON-able values. ``info`` (called after a
        miss) adds provenance stored beside the value; the compute time is always added.
        """
        return self.get_or_compute_with_info(kind, fields, compute, info)[0]

    def get_or_compute_with_info(
        self, kind: str, fields: Any, compute: Callable[[], Artifact], info: Callable[[], dict[str, Any]] | None = None
    ) -> tuple[Artifact, dict[str, Any]]:
        """Like :meth:`get_or_compute`, also returning the provenance stored beside the value."""
        start = time.perf_counter()
        loaded = self.load(kind, fields)
        if loaded is not None:
            self.events.append(CacheEvent(kind, self.key(kind, fields), True, time.perf_counter() - start))
            return loaded
        value = compute()
        if not isinstance(value, dict):
            raise TypeError(f"compute() for cache kind {kind!r} must return a dict, got {type(value).__name__}")
        seconds = time.perf_counter() - start
        extra = {
            "compute_seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(info() if info else {}),
        }
        self.store(kind, fields, value, extra)
        self.events.append(CacheEvent(kind, self.key(kind, fields), False, seconds))
        return value, extra

    def info(self, kind: str, fields: Any) -> dict[str, Any] | None:
        """The provenance stored with an entry (compute time, device, ...), or None."""
        loaded = self.load(kind, fields)
        return loaded[1] if loaded else None

    def get_or_train(
        self,
        kind: str,
        fields: Any,
        model: nn.Module,
        fit: Callable[[nn.Module], dict[str, Any]],
        info: Callable[[], dict[str, Any]] | None = None,
        attachments: dict[str, Any] | None = None,
    ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
        """``model`` with cached weights, or trained by ``fit(model)`` and stored.

        ``fit`` trains the model in place and returns JSON-able extras (such as its history);
        they come back with the weights on a hit, with the provenance stored beside them.
        ``attachments`` are objects with ``state_dict``/``load_state_dict`` stored in the same
        entry (an attack's trigger or generator travels with its backdoored model). The model is
        rebuilt by the caller, so only tensors are ever loaded.
        """
        attachments = attachments or {}

        def compute() -> Artifact:
            extras = fit(model)
            value = {"extras": extras, **{f"state.{k}": v for k, v in model.state_dict().items()}}
            for name, obj in attachments.items():
                value.update({f"{name}.{k}": v for k, v in obj.state_dict().items()})
            return value

        value, stored_info = self.get_or_compute_with_info(kind, fields, compute, info)
        model.load_state_dict(_prefixed(value, "state."))
        for name, obj in attachments.items():
            obj.load_state_dict(_prefixed(value, f"{name}."))
        model.eval()
        return model, value["extras"], stored_info


def _prefixed(value: Artifact, prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in value.items() if k.startswith(prefix)}
