"""Vector files: safetensors with steerscope metadata, and llama.cpp / repeng GGUF control vectors.

Readers treat every file as untrusted: nothing is ever unpickled, the GGUF layout is parsed here
with every length and offset checked against the file, and any problem raises EngineError.
Writers go through a temp file and a rename, so a failed save leaves nothing behind.

Dtypes: float32 is kept bit for bit; float16 and bfloat16 are widened to float32 (exact); any
other dtype, NaN or infinity is refused. Loaded vectors are always [K, d] float32.

GGUF blocks: llama.cpp adds `direction.N` to the output of block N (0-based), the same place
`steer(model, N, ...)` hooks, so block s is written as direction.s. llama.cpp rejects a whole
file that holds direction.0 (common_control_vector_load_one), so block 0 is refused on export.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from engine.errors import EngineError

PathArg = str | os.PathLike[str]

MAX_FILE_BYTES = 256 * 2**20  # default cap on a vector file read from disk
FORMAT = "steerscope.vectors"  # safetensors metadata "format"
VERSION = 1  # bumped when the layout changes; files from a newer version are refused
TENSOR_NAME = "vectors"  # the [K, d] tensor in steerscope safetensors files
META_KEY = "steerscope.metadata"  # GGUF string KV holding the metadata JSON
VERSION_KEY = "steerscope.version"  # GGUF uint32 KV
GGUF_ARCH = "controlvector"

_WIDENED = (torch.float16, torch.bfloat16)
_DIRECTION = re.compile(r"direction\.(\d+)", re.ASCII)
_GGML_FLOATS = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # GGML tensor type ids
_GGUF_SCALARS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))  # id -> struct
_GGUF_STRING, _GGUF_ARRAY = 8, 9
# pickle protocols 2-5, and the zip that torch.save writes around a pickle
_PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@dataclass(frozen=True)
class VectorFile:
    """What a vector file holds."""

    vectors: Tensor  # [K, d] float32
    metadata: dict[str, Any]  # steerscope files: the dict given when saving
    blocks: tuple[int, ...] | None = None  # block whose output each row steers, when the file says
    model_hint: str | None = None  # GGUF controlvector.model_hint

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])


def save_vectors(path: PathArg, vectors: Tensor, metadata: Mapping[str, Any] | None = None) -> None:
    """Write [K, d] (or one [d]) vectors and a JSON-able metadata dict as safetensors."""
    rows = _rows(_as_float32(vectors, "the vectors to save"), "the vectors to save")
    header = {"format": FORMAT, "version": str(VERSION), "metadata": _dump_metadata(metadata)}
    data = safetensors.torch.save({TENSOR_NAME: rows.contiguous()}, metadata=header)
    with _atomic(Path(path)) as tmp:
        tmp.write_bytes(data)


def load_vectors(
    path: PathArg, *, expected_width: int | None = None, max_bytes: int = MAX_FILE_BYTES
) -> VectorFile:
    """Read a safetensors vector file (steerscope's, or any file with one float tensor)."""
    return _parse_safetensors(Path(path).name, _read(Path(path), max_bytes), expected_width)


def export_gguf(
    path: PathArg,
    vectors_by_block: Mapping[int, Tensor] | Sequence[tuple[int, Tensor]],
    model_hint: str,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a llama.cpp / repeng control vector: one [d] float32 `direction.<block>` per block."""
    pairs = list(vectors_by_block.items() if isinstance(vectors_by_block, Mapping) else vectors_by_block)
    if not pairs:
        raise EngineError("nothing to export: give at least one (block, vector) pair")
    if not isinstance(model_hint, str):
        raise EngineError("the model hint must be a string, e.g. the architecture 'llama'")
    rows: dict[int, Tensor] = {}
    for block, vector in pairs:
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise EngineError(f"block must be a non-negative integer, got {block!r}")
        if block == 0:
            raise EngineError(
                "block 0 cannot be exported as a GGUF control vector: llama.cpp rejects a file "
                "holding direction.0; steer block 1 or later, or export safetensors instead"
            )
        if block in rows:
            raise EngineError(f"block {block} is given twice; a control vector has one direction per block")
        rows[block] = _as_float32(vector, f"the vector for block {block}")
        if rows[block].dim() != 1 or rows[block].numel() == 0:
            raise EngineError(f"the vector for block {block} must have shape [d], got {list(vector.shape)}")
    if len(widths := sorted({int(r.shape[0]) for r in rows.values()})) > 1:
        raise EngineError(f"all directions must have the same width, got {widths}")
    meta_json = _dump_metadata(metadata)
    with _atomic(Path(path)) as tmp:
        writer = gguf.GGUFWriter(tmp, GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(rows))  # as repeng: the direction count
        writer.add_uint32(VERSION_KEY, VERSION)
        writer.add_string(META_KEY, meta_json)
        for block in sorted(rows):
            writer.add_tensor(f"direction.{block}", rows[block].numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def import_gguf(
    path: PathArg, *, expected_width: int | None = None, max_bytes: int = MAX_FILE_BYTES
) -> VectorFile:
    """Read a GGUF control vector: one row per `direction.<block>`, in block order."""
    return _parse_gguf(Path(path).name, _read(Path(path), max_bytes), expected_width)


def load_any(
    path: PathArg, *, expected_width: int | None = None, max_bytes: int = MAX_FILE_BYTES
) -> VectorFile:
    """Read safetensors or GGUF, told apart by the file's first bytes (never by its extension)."""
    name, data = Path(path).name, _read(Path(path), max_bytes)
    if data[:4] == b"GGUF":
        return _parse_gguf(name, data, expected_width)
    if data[8:9] == b"{":  # safetensors: a u64 header length, then the JSON header
        return _parse_safetensors(name, data, expected_width)
    raise _unreadable(name, data, "a safetensors or GGUF vector file")


def _as_float32(tensor: Any, what: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise EngineError(f"{what} must be a torch tensor, got {type(tensor).__name__}")
    if tensor.dtype in _WIDENED:
        tensor = tensor.float()
    elif tensor.dtype != torch.float32:
        dtype = str(tensor.dtype).removeprefix("torch.")
        raise EngineError(f"{what}: dtype {dtype} is not accepted; use float32 (float16/bfloat16 widen)")
    if not bool(torch.isfinite(tensor).all()):
        raise EngineError(f"{what}: contains NaN or infinite values")
    return tensor.detach().cpu()


def _rows(tensor: Tensor, what: str) -> Tensor:
    rows = tensor[None] if tensor.dim() == 1 else tensor  # [K, d]
    if rows.dim() != 2 or 0 in rows.shape:
        raise EngineError(f"{what} must have shape [K, d] or [d], got {list(tensor.shape)}")
    return rows


def _dump_metadata(metadata: Mapping[str, Any] | None) -> str:
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise EngineError("metadata must be a dict with string keys")
    try:
        return json.dumps(dict(metadata), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"metadata must be JSON-able, without NaN or infinity: {exc}") from None


def _load_metadata(name: str, text: Any, version: Any) -> dict[str, Any]:
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise EngineError(
            f"{name} has steerscope format version {version!r}; this steerscope reads 1..{VERSION}"
        )
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise EngineError(f"{name}: the steerscope metadata is not valid JSON") from None
    if not isinstance(value, dict):
        raise EngineError(f"{name}: the steerscope metadata must be a JSON object")
    return value


def _finish(name: str, rows: Tensor, expected_width: int | None, **fields: Any) -> VectorFile:
    if expected_width is not None and rows.shape[1] != expected_width:
        width = rows.shape[1]
        raise EngineError(
            f"{name} holds vectors of width {width}; the model's hidden size is {expected_width}"
        )
    return VectorFile(vectors=rows, **fields)


def _read(path: Path, max_bytes: int) -> bytes:
    limit = f"{max_bytes / 2**20:g} MiB" if max_bytes >= 2**20 else f"{max_bytes:,} bytes"
    try:
        if not path.is_file():
            raise EngineError(f"{path} is not a file" if path.exists() else f"no such file: {path}")
        if (size := path.stat().st_size) > max_bytes:
            raise EngineError(f"{path.name} is {size:,} bytes, over the {limit} limit for vector files")
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise EngineError(f"{path.name} is over the {limit} limit for vector files")
    return data


def _unreadable(name: str, data: bytes, wanted: str) -> EngineError:
    """The refusal for a file that is not `wanted`; pickles are named so nobody tries to force them."""
    if data.startswith(_PICKLE_PREFIXES):
        return EngineError(
            f"{name} looks like a pickle or PyTorch .pt/.bin file; steerscope never loads pickles "
            "(they can run arbitrary code). Save the vectors as safetensors instead."
        )
    return EngineError(f"{name} is not {wanted}")


def _parse_safetensors(name: str, data: bytes, expected_width: int | None) -> VectorFile:
    if data[:4] == b"GGUF" or data[8:9] != b"{":
        raise _unreadable(name, data, "a safetensors file")
    try:
        tensors = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        raise EngineError(
            f"{name} is not a readable safetensors file (truncated or damaged: {exc})"
        ) from None
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # valid: the load succeeded
    stored: dict[str, str] = header.get("__metadata__") or {}
    if TENSOR_NAME in tensors or len(tensors) == 1:
        key = TENSOR_NAME if TENSOR_NAME in tensors else next(iter(tensors))
    else:
        found = ", ".join(sorted(tensors)) or "none"
        raise EngineError(f"{name} must hold one tensor (or one named '{TENSOR_NAME}'); found: {found}")
    what = f"'{key}' in {name}"
    rows = _rows(_as_float32(tensors[key], what), what)
    if stored.get("format") == FORMAT:
        text = stored.get("version", "")
        version = int(text) if text.isascii() and text.isdigit() else None  # "²" is a digit to isdigit
        metadata = _load_metadata(name, stored.get("metadata"), version)
    else:
        metadata = dict(stored)  # another tool's file: keep its string metadata as it is
    block = metadata.get("block")
    blocks = (block,) * rows.shape[0] if isinstance(block, int) and not isinstance(block, bool) else None
    return _finish(name, rows, expected_width, metadata=metadata, blocks=blocks)


class _Reader:
    """Little-endian reads over GGUF bytes; running past the end is an EngineError."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data, self.pos = name, data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EngineError(f"{self.name} is truncated or damaged: its GGUF data runs past the end")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def unpack(self, code: str) -> Any:
        return struct.unpack("<" + code, self.take(struct.calcsize("<" + code)))[0]

    def string(self) -> str:
        try:
            return self.take(self.unpack("Q")).decode("utf-8")
        except UnicodeDecodeError:
            raise EngineError(f"{self.name}: a GGUF string is not valid UTF-8") from None

    def value(self, kind: int, depth: int = 0) -> Any:
        """A KV value; arrays are bounds-checked and skipped (a control vector needs none)."""
        if kind in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[kind])
        if kind == _GGUF_STRING:
            return self.string()
        if kind == _GGUF_ARRAY and depth < 3:
            item, count = self.unpack("I"), self.unpack("Q")
            if item in _GGUF_SCALARS:
                self.take(count * struct.calcsize("<" + _GGUF_SCALARS[item]))
            else:
                for _ in range(count):  # every item takes 8+ bytes, so a bogus count ends quickly
                    self.value(item, depth + 1)
            return None
        raise EngineError(f"{self.name}: unknown or too deeply nested GGUF value type {kind}")


def _parse_gguf(name: str, data: bytes, expected_width: int | None) -> VectorFile:
    if data[:4] != b"GGUF":
        raise _unreadable(name, data, "a GGUF file")
    r = _Reader(name, data)
    r.take(4)
    if (version := r.unpack("I")) not in (2, 3):
        raise EngineError(f"{name}: GGUF version {version} is not supported (2 or 3, little-endian)")
    n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        kv[key] = r.value(r.unpack("I"))
    infos: list[tuple[str, list[int], int, int]] = []  # name, dims (ggml order), type, offset
    for _ in range(n_tensors):
        tensor_name, n_dims = r.string(), r.unpack("I")
        if n_dims > 4:
            raise EngineError(f"{name}: tensor {tensor_name!r} has {n_dims} dimensions; GGUF allows 4")
        infos.append((tensor_name, [r.unpack("Q") for _ in range(n_dims)], r.unpack("I"), r.unpack("Q")))
    if (arch := kv.get("general.architecture")) not in (None, GGUF_ARCH):
        raise EngineError(f"{name} is a GGUF file for {arch!r} (a model?), not a control vector")
    align = kv.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise EngineError(f"{name}: general.alignment must be a power of two, got {align!r}")
    start = -(-r.pos // align) * align  # tensor data begins at the next aligned offset
    rows: dict[int, Tensor] = {}
    for tensor_name, dims, kind, offset in infos:
        if (match := _DIRECTION.fullmatch(tensor_name)) is None:
            raise EngineError(f"{name}: tensor {tensor_name!r} is not a control vector direction.<block>")
        if (block := int(match.group(1))) in rows:
            raise EngineError(f"{name} has two directions for block {block}")
        if kind not in _GGML_FLOATS:
            raise EngineError(f"{name}: {tensor_name} has GGML type {kind}; only F32 (or F16/BF16) is read")
        if not dims or dims[0] == 0 or any(d != 1 for d in dims[1:]):
            raise EngineError(f"{name}: {tensor_name} must be a non-empty 1-D vector, got shape {dims}")
        r.pos = start + offset
        raw = bytearray(r.take(dims[0] * _GGML_FLOATS[kind].itemsize))
        rows[block] = _as_float32(torch.frombuffer(raw, dtype=_GGML_FLOATS[kind]), f"{tensor_name} in {name}")
    if not rows:
        raise EngineError(f"{name} holds no direction tensors")
    if len(widths := sorted({int(v.shape[0]) for v in rows.values()})) > 1:
        raise EngineError(f"{name}: the directions have different widths {widths}")
    metadata = _load_metadata(name, kv[META_KEY], kv.get(VERSION_KEY)) if META_KEY in kv else {}
    hint = kv.get(f"{GGUF_ARCH}.model_hint")
    blocks = tuple(sorted(rows))
    stacked = torch.stack([rows[b] for b in blocks])  # [K, d]
    hint = hint if isinstance(hint, str) else None
    return _finish(name, stacked, expected_width, metadata=metadata, blocks=blocks, model_hint=hint)


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temp path beside `path`, renamed onto it only when the body succeeds; removed otherwise."""
    if not path.parent.is_dir():
        raise EngineError(f"cannot write {path}: the folder {path.parent} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise EngineError(f"cannot write in {path.parent}: {exc.strerror}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EngineError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
