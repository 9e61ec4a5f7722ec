"""An on-disk cache of the base weights' SVDs, so that LoRA-Dash's launch does not redo them.

The launch (paper Sec. 4) needs the full thin SVD W = U diag(S) Vh of every targeted weight: all singular values
for the change rates' denominators and all of U, Vh for the numerators u_i^T B and v_i^T A^T. That SVD depends
only on the frozen base weight, not on the seed, the rank, the number of directions or the LoRA update, so every
run on the same base model can share it.

Layout: ``<directory>/<model>/<key>.<device type>.safetensors``, where ``<model>`` is the base model's
name (peft's ``base_model_name_or_path``, made file-name safe) and ``<key>`` is the sha256 of the weight's
shape, dtype and fp32 bytes. An entry holds U, S, Vh (fp32, exactly what :func:`weight_svd` returned) and, in its
safetensors metadata, the weight key and a sha256 of its own tensors. It is used only if both match and the
shapes fit the weight; anything else (a truncated or corrupt file, an entry of another weight, a wrong shape)
is recomputed and atomically replaced (temporary file + ``os.replace``; concurrent writers each write a
complete file). Only safetensors is read or written: nothing is unpickled.

The device type is part of the name because SVDs on different devices (or BLAS libraries) may differ in the
last bits or in the signs of singular-vector pairs: a cached launch gives bit-identically the selection of the
run that wrote the entry (the same as an uncached launch on the same machine). Disk use is that of U and Vh:
about (out + in) x min(out, in) x 4 bytes per matrix (0.8 GB per LLaMA-3-8B layer with q/k/v/up/down targeted).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .selection import SVD, weight_svd

__all__ = ["SVDCache", "SVD_CACHE_ENV", "weight_key"]

logger = logging.getLogger(__name__)

SVD_CACHE_ENV = "LORADASH_SVD_CACHE"
FORMAT = "loradash-svd-1"  # bump when the stored content or the key changes
_NAMES = ("U", "S", "Vh")


def weight_key(weight: torch.Tensor) -> str:
    """sha256 (hex) of a weight's shape, dtype and fp32 bytes: the identity of its SVD."""
    h = hashlib.sha256(f"{FORMAT}|{tuple(weight.shape)}|{weight.dtype}|".encode())
    h.update(_fp32_cpu(weight).numpy())
    return h.hexdigest()


def _fp32_cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _payload_hash(tensors: SVD) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(_fp32_cpu(t).numpy())
    return h.hexdigest()


def _model_folder(model_id: str | None) -> str:
    # A hub id ("meta-llama/Meta-Llama-3-8B") or a local path; models built from a config have none.
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", model_id or "").strip("-.")
    return name[-120:] or "unnamed"


@dataclass(frozen=True)
class SVDCache:
    """The SVDs of one base model's weights under ``directory`` (see the module docstring for the layout).

    Args:
        directory: the cache root; created on the first write.
        model_id: the base model's identity (a hub id or path); entries are grouped by it, and found by the hash
            of the weight itself, so a wrong or missing model_id can cost a recomputation but never a wrong SVD.
        write: store newly computed SVDs (False: read only, e.g. on ranks other than 0).
    """

    directory: str
    model_id: str | None = None
    write: bool = True

    def path(self, weight: torch.Tensor, key: str | None = None) -> str:
        """Where the SVD of ``weight`` lives (pass ``key = weight_key(weight)`` if already known)."""
        key = key or weight_key(weight)
        name = f"{key}.{weight.device.type}.safetensors"
        return os.path.join(self.directory, _model_folder(self.model_id), name)

    def svd(self, weight: torch.Tensor) -> SVD:
        """``weight_svd(weight)``, read from the cache when a valid entry exists, else computed and stored.

        Returns fp32 (U [out, k], S [k], Vh [k, in]) on ``weight``'s device.
        """
        key = weight_key(weight)
        path = self.path(weight, key)
        cached = self._read(path, key, tuple(weight.shape))
        if cached is not None:
            U, S, Vh = (t.to(weight.device) for t in cached)
            return U, S, Vh
        result = weight_svd(weight)
        if self.write:
            self._write(path, key, result)
        return result

    def _read(self, path: str, key: str, shape: tuple[int, ...]) -> SVD | None:
        if not os.path.exists(path):
            return None
        try:
            return _load_entry(path, key, shape)
        except Exception as exc:  # safetensors raises its own error type for truncated or garbled files
            logger.warning("SVD cache entry %s is invalid (%s); recomputing it.", path, exc)
            return None

    def _write(self, path: str, key: str, svd: SVD) -> None:
        tensors = {n: _fp32_cpu(t) for n, t in zip(_NAMES, svd, strict=True)}
        metadata = {
            "format": "pt",
            "format_version": FORMAT,
            "weight_key": key,
            "payload_sha256": _payload_hash((tensors["U"], tensors["S"], tensors["Vh"])),
            "model_id": self.model_id or "",
            "torch_version": torch.__version__,
        }
        folder = os.path.dirname(path)
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            save_file(tensors, tmp, metadata=metadata)
            with open(tmp, "rb") as f:  # on disk before it becomes visible under its real name
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except (OSError, SafetensorError) as exc:
            # The cache only saves time: a full disk or a read-only folder must not stop the launch.
            logger.warning("Could not write SVD cache entry %s (%s); continuing without it.", path, exc)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)


def _load_entry(path: str, key: str, shape: tuple[int, ...]) -> SVD:
    """Read and check one entry; raises ValueError saying what is wrong with it."""
    out_f, in_f = shape
    k = min(out_f, in_f)
    expected = {"U": [out_f, k], "S": [k], "Vh": [k, in_f]}
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format_version") != FORMAT or meta.get("weight_key") != key:
            raise ValueError("it belongs to another weight or format")
        if set(f.keys()) != set(_NAMES):
            raise ValueError(f"it holds {sorted(f.keys())}, not {list(_NAMES)}")
        for n in _NAMES:
            sl = f.get_slice(n)
            if sl.get_shape() != expected[n] or sl.get_dtype() != "F32":
                raise ValueError(f"{n} is {sl.get_dtype()} {sl.get_shape()}, not F32 {expected[n]}")
        U, S, Vh = (f.get_tensor(n) for n in _NAMES)
    if _payload_hash((U, S, Vh)) != meta.get("payload_sha256"):
        raise ValueError("its tensors do not match their checksum")
    return U, S, Vh
