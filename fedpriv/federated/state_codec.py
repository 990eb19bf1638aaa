"""Host state as a JSON skeleton plus named arrays: the form a round checkpoint stores.

The training loop's state is a mix of pytrees (the server state, stage states with typed
keys, optax states), plain Python (stats, lists of seconds, a ledger's rounds) and a few
host objects (a fitted screening detector). :func:`encode` walks such a value and returns
a JSON-able *skeleton* and a flat ``{name: np.ndarray}`` of every array in it; Orbax
stores the two (``fedpriv.federated.checkpoints``) and :func:`decode` rebuilds the value.

Why not pickle: a checkpoint is data, never code. Only containers, scalars, arrays, typed
PRNG keys and the dataclasses and named tuples of ``fedpriv`` and ``optax`` are encoded;
decoding imports nothing else, so a checkpoint folder cannot run code. Anything else is
refused when the checkpoint is WRITTEN (a party whose state cannot be stored fails on the
first checkpoint, not on the resume).

Bit-identity: arrays keep their dtype, shape and bytes (NumPy or JAX, as they were);
Python floats and numeric scalars (0-d arrays, NumPy scalars: a round's stats) go inline
through JSON's shortest round-trip repr with their dtype; typed keys are stored as their
key data and implementation name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Modules whose dataclasses and named tuples a checkpoint may hold (decoding imports only these).
ALLOWED_MODULES = ("fedpriv.", "optax.")


def encode(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``value`` as ``(skeleton, arrays)``: JSON-able structure plus host arrays ``{"a<i>": array}``.

    Raises:
      TypeError: naming the path (e.g. ``state.parties.budget[2]``) of a value of a type
        the codec does not store.
    """
    arrays: dict[str, np.ndarray] = {}
    return _encode(value, arrays, "state"), arrays


def decode(skeleton: Any, arrays: dict[str, Any]) -> Any:
    """The value :func:`encode` gave ``(skeleton, arrays)`` for."""
    return _decode(skeleton, arrays)


def digest(skeleton: Any, arrays: dict[str, Any]) -> str:
    """SHA-256 of the skeleton's canonical JSON and every array's dtype, shape and bytes.

    Stored beside a checkpoint and recomputed on restore: a torn or edited checkpoint that
    the storage layer still reads (a truncated chunk read back as zeros, a half-written
    JSON file that parses) is detected here.
    """
    hasher = hashlib.sha256(json.dumps(skeleton, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(np.asarray(arrays[name]))
        hasher.update(f"{name}{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def _store(arrays: dict, array) -> str:
    name = f"a{len(arrays)}"
    arrays[name] = np.array(jax.device_get(array), copy=True)  # written later, in Orbax's background thread
    return name


def _encode_array(value, arrays: dict, path: str) -> dict:
    kind = "jax" if isinstance(value, jax.Array) else "scalar" if isinstance(value, np.generic) else "numpy"
    host = np.asarray(jax.device_get(value))
    if kind == "jax" and value.aval.weak_type:  # a weak type changes dtype promotion, so it must survive
        if host.ndim:
            raise TypeError(f"{path}: cannot checkpoint a weakly typed array of shape {host.shape} (only scalars "
                            "keep their weak type through a checkpoint)")
        kind = "weak"
    if host.ndim == 0 and host.dtype.kind in "biuf":  # inline: a round's stats are hundreds of scalars
        return {"$scalar": host.item(), "kind": kind, "dtype": host.dtype.str}
    if host.size == 0:  # Orbax refuses zero-size arrays; their shape and dtype say everything
        return {"$array": None, "kind": kind, "dtype": host.dtype.str, "shape": list(host.shape)}
    return {"$array": _store(arrays, host), "kind": kind}


def _class_path(cls: type, path: str) -> str:
    if not cls.__module__.startswith(ALLOWED_MODULES):
        raise TypeError(f"{path}: cannot checkpoint a {cls.__module__}.{cls.__qualname__}; a checkpoint stores "
                        f"containers, scalars, arrays, keys and the dataclasses of {ALLOWED_MODULES}")
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode_dataclass(value, arrays: dict, path: str) -> dict:
    fields = {field.name: field for field in dataclasses.fields(value)}
    hidden = sorted(set(getattr(value, "__dict__", {})) - set(fields))
    if hidden or not all(field.init for field in fields.values()):
        raise TypeError(f"{path}: {type(value).__qualname__} keeps state outside its init fields "
                        f"({hidden or [n for n, f in fields.items() if not f.init]}); give it "
                        "checkpoint_state()/restore_state() instead")
    return {"$dataclass": _class_path(type(value), path),
            "fields": {name: _encode(getattr(value, name), arrays, f"{path}.{name}") for name in fields}}


def _encode(value: Any, arrays: dict, path: str) -> Any:
    if value is None or type(value) in (bool, str, int, float):
        return value
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        return {"$key": _store(arrays, jax.random.key_data(value)), "impl": str(jax.random.key_impl(value))}
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return _encode_array(value, arrays, path)
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return {"$namedtuple": _class_path(type(value), path),
                "fields": [_encode(item, arrays, f"{path}.{name}") for name, item in zip(value._fields, value)]}
    if type(value) is tuple:
        return {"$tuple": [_encode(item, arrays, f"{path}[{index}]") for index, item in enumerate(value)]}
    if type(value) is list:
        return [_encode(item, arrays, f"{path}[{index}]") for index, item in enumerate(value)]
    if type(value) is dict:  # pairs keep key types (round indices) and order
        return {"$dict": [[_encode(key, arrays, f"{path}.<key>"), _encode(item, arrays, f"{path}[{key!r}]")]
                          for key, item in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_dataclass(value, arrays, path)
    raise TypeError(f"{path}: cannot checkpoint a value of type {type(value).__module__}.{type(value).__qualname__}")


def _resolve_class(spec: str) -> type:
    module, _, qualname = spec.partition(":")
    if not module.startswith(ALLOWED_MODULES):
        raise ValueError(f"checkpoint names class {spec!r} outside {ALLOWED_MODULES}; refusing to load it")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not isinstance(cls, type):
        raise ValueError(f"checkpoint names {spec!r}, which is not a class")
    return cls


def _decode_array(node: dict, arrays: dict):
    if "$scalar" in node:
        host = np.asarray(node["$scalar"], np.dtype(node["dtype"]))
    elif node["$array"] is None:
        host = np.zeros(node["shape"], np.dtype(node["dtype"]))
    else:
        host = np.asarray(arrays[node["$array"]])
    if node["kind"] == "jax":
        return jnp.asarray(host)
    if node["kind"] == "weak":  # a Python scalar gives JAX's weak type back
        weak = jnp.asarray(host.item())
        return weak if weak.dtype == host.dtype else jnp.asarray(host)
    return host[()] if node["kind"] == "scalar" else host


def _decode(node: Any, arrays: dict) -> Any:
    if isinstance(node, list):
        return [_decode(item, arrays) for item in node]
    if not isinstance(node, dict):
        return node
    if "$array" in node or "$scalar" in node:
        return _decode_array(node, arrays)
    if "$key" in node:
        return jax.random.wrap_key_data(jnp.asarray(arrays[node["$key"]]), impl=node["impl"])
    if "$tuple" in node:
        return tuple(_decode(item, arrays) for item in node["$tuple"])
    if "$dict" in node:
        return {_decode(key, arrays): _decode(item, arrays) for key, item in node["$dict"]}
    if "$namedtuple" in node:
        return _resolve_class(node["$namedtuple"])(*(_decode(item, arrays) for item in node["fields"]))
    if "$dataclass" in node:
        cls = _resolve_class(node["$dataclass"])
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"checkpoint names {node['$dataclass']!r} as a dataclass; it is not one")
        return cls(**{name: _decode(item, arrays) for name, item in node["fields"].items()})
    raise ValueError(f"checkpoint skeleton holds an unknown node with keys {sorted(node)}")
