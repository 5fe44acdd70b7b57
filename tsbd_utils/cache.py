"""Content-addressed artifact cache: trained models, triggers, results.

An artifact is a flat dict whose values are tensors or JSON-able values. It is stored as one
safetensors file (tensors as tensors; everything else as JSON in the header), named by a hash of
its *kind*, the *fields that determine it* and the package version. Consequences:

- notebook 06 finds the models of notebook 01 by asking for them with the same fields;
- a write is atomic (temporary file, fsync, rename), so an interrupted run leaves no half file;
- a truncated, corrupted or mismatched file is detected (safetensors' own bounds checks, a
  SHA-256 of the content, the stored key) and recomputed, never loaded;
- everything an entry returns is sealed: a second SHA-256 covers the content's checksum, the kind,
  the key, the fields and the provenance, so an edited entry is detected, never reported;
- nothing is unpickled: loading cannot run code.

Provenance (wall time, device, date) is stored beside the value in ``info``, never in the key.

A cache can be used read-only (``read_only=True``, or ``$TSBD_CACHE_READ_ONLY=1``: a shared folder
filled by someone else): it is never written or cleaned, and an entry that is missing or damaged
is recomputed with a warning and not stored. A write that fails in a writable cache also only
warns: the value is still returned.
"""

from __future__ import annotations

import contextlib
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .atomic import atomic_path
from .paths import cache_dir

Artifact = dict[str, Any]
Compute = Callable[[], Artifact]  # what computes a value on a miss
Info = Callable[[], dict[str, Any]]  # provenance to store beside a value computed on a miss
Check = Callable[[Artifact], str | None]  # why a readable stored value is stale, or None (see Cache.load)
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ENTRY_NAME = re.compile(r"^([a-z0-9][a-z0-9_-]*)/([0-9a-f]{32})\.safetensors$")  # <kind>/<key>.safetensors


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


_SEALED = ("tsbd.kind", "tsbd.key", "tsbd.fields", "tsbd.digest", "tsbd.info")  # what the seal covers
READ_ONLY_ENV = "TSBD_CACHE_READ_ONLY"
# What a failed write raises: the OS's errors, and safetensors' own (a full disk while it writes is one of these).
WRITE_ERRORS = (OSError, SafetensorError)


def _seal(meta: dict[str, str]) -> str:
    """SHA-256 over the entry's metadata; ``tsbd.digest`` in it already covers the tensors and the JSON payload."""
    return hashlib.sha256(json.dumps([meta.get(k) for k in _SEALED]).encode()).hexdigest()


def read_only_from_env() -> bool:
    """Whether ``$TSBD_CACHE_READ_ONLY`` asks for a read-only cache (1/true/yes; 0/false/no/empty: not)."""
    value = os.environ.get(READ_ONLY_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"${READ_ONLY_ENV}={value!r} is not understood; allowed: 1, true, yes, 0, false, no or unset")


def _fields_text(fields: Any) -> str:
    """The key fields as the entry stores them (``tsbd.fields``), compared on every load."""
    return json.dumps(canonical(fields), sort_keys=True)


def key_of(kind: str, fields: Any, version: str = __version__) -> str:
    """The key of an entry: a hash of its kind, the package's cache version and its canonical fields."""
    if not _KIND.match(kind):
        raise ValueError(f"cache kind {kind!r} must be lower-case letters, digits, '-' or '_'")
    text = json.dumps({"kind": kind, "version": version, "fields": canonical(fields)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_entry(path: Path, kind: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """An entry's metadata and tensors, once its stored kind and key (against the file name), its checksum and its
    seal are checked; anything else raises (safetensors' own error for a truncated or garbled file)."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    tensors = load_file(str(path))
    if meta.get("tsbd.key") != path.stem or meta.get("tsbd.kind") != kind:
        raise ValueError("the stored key does not match the file name")
    if _digest(tensors, meta["tsbd.json"]) != meta["tsbd.digest"]:
        raise ValueError("the content does not match its checksum")
    if "tsbd.seal" not in meta:  # its provenance could have been edited with nothing to tell
        raise ValueError("it carries no seal (written by an older version, or its seal was removed)")
    if _seal(meta) != meta["tsbd.seal"]:
        raise ValueError("its fields or provenance do not match the seal (the entry was edited)")
    return meta, tensors


def entry_version_problem(meta: dict[str, str], version: str = __version__) -> str | None:
    """Why an entry that :func:`read_entry` accepted would never be read by this package (None if it would be):
    its key must be what this version computes from the fields it stores."""
    if key_of(meta["tsbd.kind"], json.loads(meta["tsbd.fields"]), version) != meta["tsbd.key"]:
        return f"its key is not the one cache version {version} gives its fields (another version made it)"
    return None


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
    seconds: float  # reading the entry (a hit) or computing it (a miss), lookups nested in the computation included
    exclusive: float = 0.0  # ``seconds`` less the lookups nested in it: summed over events, nothing counts twice
    role: str | None = None  # the fields' "role" (or their model's): "clean", "backdoor", "tsbd", "ft", ...


def _role(fields: Any) -> str | None:
    """What an entry is about, for accounting: the fields' "role", else the role of the model they name."""
    if isinstance(fields, dict):
        role = fields.get("role")
        if role is None and isinstance(fields.get("model"), dict):
            role = fields["model"].get("role")
        return role if isinstance(role, str) else None
    return None


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
    read_only: bool = False  # never write or delete: recompute what is missing or damaged, and warn
    # seconds of the lookups made inside each computation in progress (innermost last), for CacheEvent.exclusive
    _nested: list[float] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def at(cls, explicit: str | os.PathLike | None = None, read_only: bool | None = None) -> Cache:
        """The cache at ``explicit``, else ``$TSBD_CACHE_DIR``, else the default; ``read_only`` None reads
        ``$TSBD_CACHE_READ_ONLY``."""
        return cls(cache_dir(explicit), read_only=read_only_from_env() if read_only is None else read_only)

    def key(self, kind: str, fields: Any) -> str:
        return key_of(kind, fields, self.version)

    def path(self, kind: str, fields: Any) -> Path:
        return self.root / kind / f"{self.key(kind, fields)}.safetensors"

    def load(self, kind: str, fields: Any, check: Check | None = None) -> tuple[Artifact, dict[str, Any]] | None:
        """The stored value and its info, or None when absent or unreadable (then it is removed).

        ``check(value)`` names what makes a readable value unusable (None when it is fine), such as an
        entry written by an older version that a fix has since made impossible; it is then removed too."""
        path = self.path(kind, fields)
        if not path.is_file():
            return None
        try:
            meta, tensors = read_entry(path, kind)
            if meta.get("tsbd.fields") != _fields_text(fields):
                raise ValueError("the fields it stores are not the fields asked for")
            value: Artifact = {**json.loads(meta["tsbd.json"]), **tensors}
            info = json.loads(meta.get("tsbd.info", "{}"))
            problem = check(value) if check is not None else None
            if problem:
                raise ValueError(f"it is stale: {problem}")
            return value, info
        except Exception as err:  # truncated, corrupted, edited, foreign: never trust it
            what = "left in place (read-only cache)" if self.read_only else "removed"
            warnings.warn(
                f"cache entry {path} is unreadable ({type(err).__name__}: {err}); recomputing, entry {what}",
                stacklevel=2,
            )
            if not self.read_only:
                with contextlib.suppress(OSError):  # a folder made read-only behind our back: leave the file
                    path.unlink(missing_ok=True)
            return None

    def store(self, kind: str, fields: Any, value: Artifact, info: dict[str, Any] | None = None) -> Path:
        """Write ``value`` atomically; return its path. A failed write (a full disk, a folder made read-only) raises
        one of :data:`WRITE_ERRORS` and leaves no file; :meth:`store_or_warn` turns it into a warning."""
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
            "tsbd.fields": _fields_text(fields),
            "tsbd.digest": _digest(tensors, payload),
            "tsbd.info": json.dumps(info or {}, sort_keys=True),
        }
        meta["tsbd.seal"] = _seal(meta)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def store_or_warn(self, kind: str, fields: Any, value: Artifact, info: dict[str, Any] | None = None) -> Path | None:
        """:meth:`store`, except that a failed write only warns (the value is right; only the cache loses it) and
        gives None. A read-only cache stores nothing and says so."""
        if self.read_only:
            warnings.warn(f"read-only cache {self.root}: {kind} computed and not stored", stacklevel=3)
            return None
        try:
            return self.store(kind, fields, value, info)
        except WRITE_ERRORS as err:
            warnings.warn(f"could not store {kind} in the cache {self.root} ({type(err).__name__}: {err}); continuing",
                          stacklevel=3)
            return None

    def get_or_compute(
        self, kind: str, fields: Any, compute: Compute, info: Info | None = None, check: Check | None = None
    ) -> Artifact:
        """The cached value for (kind, fields), computing and storing it on a miss.

        ``compute`` returns a flat dict of tensors and JSON-able values. ``info`` (called after a
        miss) adds provenance stored beside the value; the compute time is always added. ``check``: see
        :meth:`load`.
        """
        return self.get_or_compute_with_info(kind, fields, compute, info, check)[0]

    def get_or_compute_with_info(
        self, kind: str, fields: Any, compute: Compute, info: Info | None = None, check: Check | None = None
    ) -> tuple[Artifact, dict[str, Any]]:
        """Like :meth:`get_or_compute`, also returning the provenance stored beside the value."""
        start = time.perf_counter()
        loaded = self.load(kind, fields, check)
        if loaded is not None:
            seconds = time.perf_counter() - start
            self._account(seconds)
            self.events.append(CacheEvent(kind, self.key(kind, fields), True, seconds, seconds, _role(fields)))
            return loaded
        self._nested.append(0.0)
        try:
            value = compute()
        finally:
            nested = self._nested.pop()
        if not isinstance(value, dict):
            raise TypeError(f"compute() for cache kind {kind!r} must return a dict, got {type(value).__name__}")
        seconds = time.perf_counter() - start
        extra = {
            "compute_seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(info() if info else {}),
        }
        self.store_or_warn(kind, fields, value, extra)
        total = time.perf_counter() - start  # the write included
        self._account(total)
        self.events.append(CacheEvent(kind, self.key(kind, fields), False, seconds, total - nested, _role(fields)))
        return value, extra

    def _account(self, seconds: float) -> None:
        """Count a lookup's time as nested in the computation that made it, if any."""
        if self._nested:
            self._nested[-1] += seconds

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
        info: Info | None = None,
        attachments: dict[str, Any] | None = None,
        check: Check | None = None,
    ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
        """``model`` with cached weights, or trained by ``fit(model)`` and stored.

        ``fit`` trains the model in place and returns JSON-able extras (such as its history);
        they come back with the weights on a hit, with the provenance stored beside them.
        ``attachments`` are objects with ``state_dict``/``load_state_dict`` stored in the same
        entry (an attack's trigger or generator travels with its backdoored model). The model is
        rebuilt by the caller, so only tensors are ever loaded. ``check``: see :meth:`load`.
        """
        attachments = attachments or {}

        def compute() -> Artifact:
            extras = fit(model)
            if not isinstance(extras, dict):  # stored as JSON beside the weights and returned on every hit
                raise TypeError(
                    f"fit must return a dict of JSON-able extras, got {type(extras).__name__}; nothing stored"
                )
            value = {"extras": extras, **{f"state.{k}": v for k, v in model.state_dict().items()}}
            for name, obj in attachments.items():
                value.update({f"{name}.{k}": v for k, v in obj.state_dict().items()})
            return value

        value, stored_info = self.get_or_compute_with_info(kind, fields, compute, info, check)
        stored = model_state(value)
        problem = _architecture_mismatch(stored, model.state_dict())
        if problem:  # the key's fields left out something that shapes the model (its width, ...)
            raise RuntimeError(
                f"the cached {kind} entry {self.key(kind, fields)} holds weights of another architecture than the "
                f"model given ({problem}); its fields must name everything that shapes the model"
            )
        model.load_state_dict(stored)
        for name, obj in attachments.items():
            obj.load_state_dict(_prefixed(value, f"{name}."))
        model.eval()
        return model, value["extras"], stored_info


def _architecture_mismatch(stored: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """The first difference between stored weights and a model's, in a few words (None if they fit)."""
    if stored.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    differ = [k for k in expected if stored[k].shape != expected[k].shape]
    if differ:
        k = differ[0]
        return (f"{len(differ)} tensor(s) differ in shape, first {k}: stored {list(stored[k].shape)}, "
                f"model {list(expected[k].shape)}")
    return None


def _prefixed(value: Artifact, prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in value.items() if k.startswith(prefix)}


def model_state(value: Artifact) -> dict[str, torch.Tensor]:
    """The model weights (a state dict) held in a stored value of :meth:`Cache.get_or_train`, for a ``check``
    that looks at them."""
    return _prefixed(value, "state.")
