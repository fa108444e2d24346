"""Vector files: bit-exact round trips, repeng / llama.cpp compatibility, and refusal of bad files."""

from __future__ import annotations

import pickle
import random
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.torch
import torch

from engine.errors import EngineError
from engine.vectors import (
    MAX_FILE_BYTES,
    VectorFile,
    export_gguf,
    import_gguf,
    load_any,
    load_vectors,
    save_vectors,
)

WIDTH = 16
META = {
    "model": "SmolLM2-135M-Instruct",
    "block": 7,
    "R": 4.25,
    "method": "melbo",
    "hyper": {"p": 2.0, "q": None, "steps": 300, "positions": "user", "prompts": ["Hi", "Tell me a story"]},
    "seed": 1234,
    "note": "ünïcödé ✓",
}
READERS = [load_vectors, import_gguf, load_any]


def awkward(k: int, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    """[k, width] float32 with values that a lossy path would change: -0.0, subnormals, extremes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, width, generator=g)
    x[0, :4] = torch.tensor([-0.0, 1.4e-45, 3.4028235e38, -1.1754942e-38])
    return x


def write_repeng(path: Path, directions: dict[int, np.ndarray], model_type: str = "llama") -> None:
    """A control vector written with the gguf library the way repeng's export_gguf does."""
    arch = "controlvector"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string(f"{arch}.model_hint", model_type)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for layer, direction in directions.items():
        writer.add_tensor(f"direction.{layer}", direction)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# --- round trips ---------------------------------------------------------------------------------


def test_safetensors_round_trip_is_bit_exact_and_keeps_metadata(tmp_path: Path) -> None:
    vectors = awkward(5)
    save_vectors(tmp_path / "run.safetensors", vectors, META)
    loaded = load_vectors(tmp_path / "run.safetensors", expected_width=WIDTH)
    assert loaded.vectors.dtype == torch.float32
    assert torch.equal(loaded.vectors, vectors)
    assert loaded.vectors.view(torch.int32).tolist() == vectors.view(torch.int32).tolist()  # -0.0 kept
    assert loaded.metadata == META
    assert loaded.blocks == (7, 7, 7, 7, 7) and loaded.width == WIDTH
    assert loaded.model_hint is None
    assert load_any(tmp_path / "run.safetensors").metadata == META


def test_single_vector_loads_as_one_row(tmp_path: Path) -> None:
    vector = awkward(1)[0]
    save_vectors(tmp_path / "one.safetensors", vector)
    loaded = load_vectors(tmp_path / "one.safetensors")
    assert loaded.vectors.shape == (1, WIDTH)
    assert torch.equal(loaded.vectors[0], vector)
    assert loaded.metadata == {} and loaded.blocks is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_widened_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    half = awkward(2).clamp(-100, 100).to(dtype)
    save_vectors(tmp_path / "half.safetensors", half)
    loaded = load_vectors(tmp_path / "half.safetensors").vectors
    assert loaded.dtype == torch.float32 and torch.equal(loaded, half.float())
    assert torch.equal(loaded.to(dtype), half)


def test_foreign_safetensors_with_one_tensor(tmp_path: Path) -> None:
    vector = awkward(1)[0]
    safetensors.torch.save_file({"steering_vector": vector}, tmp_path / "x.st", metadata={"layer": "12"})
    loaded = load_any(tmp_path / "x.st")
    assert torch.equal(loaded.vectors, vector[None])
    assert loaded.metadata == {"layer": "12"} and loaded.blocks is None


def test_gguf_round_trip_is_bit_exact_and_keeps_metadata(tmp_path: Path) -> None:
    rows = awkward(3, seed=1)
    export_gguf(tmp_path / "cv.gguf", {9: rows[2], 3: rows[0], 5: rows[1]}, "llama", META)
    loaded = import_gguf(tmp_path / "cv.gguf", expected_width=WIDTH)
    assert loaded.blocks == (3, 5, 9)
    assert torch.equal(loaded.vectors, rows)
    assert loaded.metadata == META and loaded.model_hint == "llama"
    again = load_any(tmp_path / "cv.gguf")
    assert torch.equal(again.vectors, rows) and again.blocks == (3, 5, 9)


def test_gguf_export_accepts_pairs_and_matches_what_llama_cpp_reads(tmp_path: Path) -> None:
    rows = awkward(2, seed=2)
    export_gguf(tmp_path / "cv.gguf", [(4, rows[0]), (1, rows[1])], "qwen2")
    reader = gguf.GGUFReader(tmp_path / "cv.gguf")
    assert reader.get_field("general.architecture").contents() == "controlvector"  # type: ignore[union-attr]
    assert reader.get_field("controlvector.model_hint").contents() == "qwen2"  # type: ignore[union-attr]
    assert reader.get_field("controlvector.layer_count").contents() == 2  # type: ignore[union-attr]
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.4"]
    for name, row in (("direction.4", rows[0]), ("direction.1", rows[1])):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
        assert tensors[name].shape.tolist() == [WIDTH]
        assert np.array_equal(np.asarray(tensors[name].data), row.numpy())
    assert import_gguf(tmp_path / "cv.gguf").metadata == {}


def test_repeng_written_gguf_imports(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    directions = {layer: rng.standard_normal(WIDTH).astype(np.float32) for layer in (14, 2, 10)}
    write_repeng(tmp_path / "happy.gguf", directions, "mistral")
    loaded = import_gguf(tmp_path / "happy.gguf", expected_width=WIDTH)
    assert loaded.blocks == (2, 10, 14)
    for row, layer in zip(loaded.vectors, loaded.blocks, strict=True):
        assert np.array_equal(row.numpy(), directions[layer])
    assert loaded.metadata == {} and loaded.model_hint == "mistral"


def test_gguf_half_precision_directions_are_widened(tmp_path: Path) -> None:
    half = awkward(1).clamp(-100, 100)[0].to(torch.float16)
    write_repeng(tmp_path / "h.gguf", {6: half.numpy()})
    assert torch.equal(import_gguf(tmp_path / "h.gguf").vectors[0], half.float())


def test_format_is_told_by_magic_not_extension(tmp_path: Path) -> None:
    rows = awkward(2)
    save_vectors(tmp_path / "really_safetensors.gguf", rows, {"block": 3})
    export_gguf(tmp_path / "really_gguf.safetensors", {3: rows[1]}, "llama", {"k": 1})
    first = load_any(tmp_path / "really_safetensors.gguf")
    second = load_any(tmp_path / "really_gguf.safetensors")
    assert torch.equal(first.vectors, rows) and first.metadata == {"block": 3}
    assert torch.equal(second.vectors, rows[1:]) and second.metadata == {"k": 1} and second.blocks == (3,)
    with pytest.raises(EngineError, match="not a GGUF"):
        import_gguf(tmp_path / "really_safetensors.gguf")
    with pytest.raises(EngineError, match="not a safetensors"):
        load_vectors(tmp_path / "really_gguf.safetensors")


# --- refusals on write: clear error, nothing written, an existing file untouched ------------------


@pytest.mark.parametrize(
    "vectors, metadata, message",
    [
        (torch.full((2, WIDTH), float("nan")), {}, "NaN or infinite"),
        (torch.tensor([1.0, float("inf")]), {}, "NaN or infinite"),
        (torch.zeros(2, WIDTH, dtype=torch.float64), {}, "dtype float64"),
        (torch.zeros(2, WIDTH, dtype=torch.int32), {}, "dtype int32"),
        (torch.zeros(2, 3, WIDTH), {}, r"shape \[K, d\]"),
        (torch.zeros(0, WIDTH), {}, r"shape \[K, d\]"),
        (torch.zeros(2, WIDTH), {"R": float("nan")}, "JSON-able"),
        (torch.zeros(2, WIDTH), {"prompts": {"a", "b"}}, "JSON-able"),
        (torch.zeros(2, WIDTH), {1: "x"}, "string keys"),
    ],
)
def test_save_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, vectors: torch.Tensor, metadata: dict, message: str
) -> None:
    out = out_dir(tmp_path)
    with pytest.raises(EngineError, match=message):
        save_vectors(out / "v.safetensors", vectors, metadata)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "pairs, message",
    [
        ({0: torch.ones(WIDTH)}, "block 0 cannot be exported"),
        ({2: torch.ones(WIDTH), 0: torch.ones(WIDTH)}, "llama.cpp rejects"),
        ([(2, torch.ones(WIDTH)), (2, torch.ones(WIDTH))], "given twice"),
        ({-1: torch.ones(WIDTH)}, "non-negative integer"),
        ({2: torch.ones(WIDTH), 3: torch.ones(WIDTH + 1)}, "same width"),
        ({2: torch.ones(2, WIDTH)}, r"shape \[d\]"),
        ({2: torch.tensor([0.0, float("-inf")])}, "NaN or infinite"),
        ({2: torch.ones(WIDTH, dtype=torch.float64)}, "dtype float64"),
        ({}, "nothing to export"),
    ],
)
def test_export_refuses_bad_input_and_writes_nothing(tmp_path: Path, pairs: object, message: str) -> None:
    out = out_dir(tmp_path)
    with pytest.raises(EngineError, match=message):
        export_gguf(out / "cv.gguf", pairs, "llama")  # type: ignore[arg-type]
    assert list(out.iterdir()) == []


def test_failed_save_leaves_the_existing_file_intact(tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    rows = awkward(2)
    save_vectors(out / "v.safetensors", rows, {"keep": True})
    export_gguf(out / "cv.gguf", {3: rows[0]}, "llama")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(EngineError):
        save_vectors(out / "v.safetensors", torch.full((2, WIDTH), float("nan")))
    with pytest.raises(EngineError):
        export_gguf(out / "cv.gguf", {0: rows[0]}, "llama")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_write_to_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        save_vectors(tmp_path / "nope" / "v.safetensors", torch.ones(WIDTH))


# --- refusals on read ----------------------------------------------------------------------------


class Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("read", READERS)
def test_pickles_are_refused_never_loaded(tmp_path: Path, read: object) -> None:
    marker = tmp_path / "was_unpickled"
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"vectors": [[1.0, 2.0]], "block": 3}))
    (tmp_path / "trap.safetensors").write_bytes(pickle.dumps({"vectors": Trap(marker)}))
    torch.save({"vectors": torch.ones(2, WIDTH)}, tmp_path / "torch.pt")
    for name in ("plain.pkl", "trap.safetensors", "torch.pt"):
        with pytest.raises(EngineError, match="never loads pickles"):
            read(tmp_path / name)  # type: ignore[operator]
    assert not marker.exists()


@pytest.mark.parametrize("read", READERS)
def test_random_bytes_and_empty_files_are_refused(tmp_path: Path, read: object) -> None:
    rng = random.Random(7)
    for i, size in enumerate((0, 3, 64, 4096)):
        path = tmp_path / f"junk{i}.safetensors"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(size)))
        with pytest.raises(EngineError, match=r"junk\d"):
            read(path)  # type: ignore[operator]
    with pytest.raises(EngineError, match="no such file"):
        read(tmp_path / "missing.gguf")  # type: ignore[operator]
    with pytest.raises(EngineError, match="not a file"):
        read(tmp_path)  # type: ignore[operator]


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    save_vectors(tmp_path / "v.safetensors", awkward(3), META)
    export_gguf(tmp_path / "v.gguf", {2: awkward(1)[0], 5: awkward(1)[0]}, "llama", META)
    for name, read in (("v.safetensors", load_vectors), ("v.gguf", import_gguf)):
        whole = (tmp_path / name).read_bytes()
        for cut in (1, 4, 8, 9, 20, 40, len(whole) // 2, len(whole) - 1):
            (tmp_path / "cut").write_bytes(whole[:cut])
            for reader in (read, load_any):
                with pytest.raises(EngineError):
                    reader(tmp_path / "cut")


def test_truncated_gguf_says_so(tmp_path: Path) -> None:
    export_gguf(tmp_path / "v.gguf", {2: torch.ones(WIDTH)}, "llama")
    whole = (tmp_path / "v.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:-8])
    with pytest.raises(EngineError, match=r"cut\.gguf is truncated or damaged"):
        import_gguf(tmp_path / "cut.gguf")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_in_files_are_refused(tmp_path: Path, value: float) -> None:
    bad = awkward(2)
    bad[1, 3] = value
    safetensors.torch.save_file({"vectors": bad}, tmp_path / "v.safetensors")
    write_repeng(tmp_path / "v.gguf", {4: bad[1].numpy()})
    for path in (tmp_path / "v.safetensors", tmp_path / "v.gguf"):
        with pytest.raises(EngineError, match="NaN or infinite"):
            load_any(path)


def test_wrong_width_is_refused(tmp_path: Path) -> None:
    save_vectors(tmp_path / "v.safetensors", awkward(2))
    export_gguf(tmp_path / "v.gguf", {3: awkward(1)[0]}, "llama")
    for path in (tmp_path / "v.safetensors", tmp_path / "v.gguf"):
        with pytest.raises(EngineError, match=f"width {WIDTH}; the model's hidden size is 576"):
            load_any(path, expected_width=576)
        assert load_any(path, expected_width=WIDTH).width == WIDTH


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8, torch.bool])
def test_wrong_dtype_in_safetensors_is_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    safetensors.torch.save_file({"vectors": torch.ones(2, WIDTH, dtype=dtype)}, tmp_path / "v.safetensors")
    with pytest.raises(EngineError, match=f"dtype {str(dtype).removeprefix('torch.')} is not accepted"):
        load_vectors(tmp_path / "v.safetensors")


@pytest.mark.parametrize("array", [np.ones(WIDTH, dtype=np.int32), np.ones(WIDTH, dtype=np.float64)])
def test_wrong_dtype_in_gguf_is_refused(tmp_path: Path, array: np.ndarray) -> None:
    write_repeng(tmp_path / "v.gguf", {4: array})
    with pytest.raises(EngineError, match="only F32"):
        import_gguf(tmp_path / "v.gguf")


def test_wrong_rank_is_refused(tmp_path: Path) -> None:
    safetensors.torch.save_file({"vectors": torch.ones(2, 3, WIDTH)}, tmp_path / "v.safetensors")
    with pytest.raises(EngineError, match=r"shape \[K, d\] or \[d\], got \[2, 3, 16\]"):
        load_vectors(tmp_path / "v.safetensors")
    write_repeng(tmp_path / "v.gguf", {4: np.ones((2, WIDTH), dtype=np.float32)})
    with pytest.raises(EngineError, match="must be a non-empty 1-D vector"):
        import_gguf(tmp_path / "v.gguf")


def test_ambiguous_safetensors_is_refused(tmp_path: Path) -> None:
    safetensors.torch.save_file({"a": torch.ones(WIDTH), "b": torch.ones(WIDTH)}, tmp_path / "v.safetensors")
    with pytest.raises(EngineError, match="found: a, b"):
        load_vectors(tmp_path / "v.safetensors")


@pytest.mark.parametrize(
    "names, message",
    [
        (["direction.x"], "'direction.x' is not a control vector direction"),
        (["direction.-1"], "not a control vector direction"),
        (["direction.3", "token_embd.weight"], "'token_embd.weight' is not"),
        (["direction.3", "direction.03"], "two directions for block 3"),
        ([], "holds no direction tensors"),
    ],
)
def test_ill_formed_directions_are_refused(tmp_path: Path, names: list[str], message: str) -> None:
    writer = gguf.GGUFWriter(tmp_path / "v.gguf", "controlvector")
    for name in names:
        writer.add_tensor(name, np.ones(WIDTH, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(EngineError, match=message):
        import_gguf(tmp_path / "v.gguf")


def test_model_gguf_and_mismatched_widths_are_refused(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "model.gguf", "llama")
    writer.add_tensor("direction.3", np.ones(WIDTH, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(EngineError, match="for 'llama' \\(a model\\?\\), not a control vector"):
        import_gguf(tmp_path / "model.gguf")
    write_repeng(tmp_path / "v.gguf", {2: np.ones(4, np.float32), 3: np.ones(5, np.float32)})
    with pytest.raises(EngineError, match=r"different widths \[4, 5\]"):
        import_gguf(tmp_path / "v.gguf")


def test_direction_zero_from_another_tool_is_read_as_block_zero(tmp_path: Path) -> None:
    write_repeng(tmp_path / "v.gguf", {0: np.full(WIDTH, 2.0, np.float32)})
    loaded = import_gguf(tmp_path / "v.gguf")
    assert loaded.blocks == (0,) and loaded.vectors.tolist() == [[2.0] * WIDTH]


def test_gguf_with_a_huge_array_count_fails_fast(tmp_path: Path) -> None:
    key = b"evil"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    # an array of 2**62 strings, then nothing: must be refused, not looped over
    (tmp_path / "evil.gguf").write_bytes(header + struct.pack("<IIQ", 9, 8, 2**62) + b"\0" * 64)
    with pytest.raises(EngineError, match="truncated or damaged"):
        import_gguf(tmp_path / "evil.gguf")


@pytest.mark.parametrize(("version", "shown"), [("99", "99"), ("²", "None")])
def test_newer_or_unreadable_format_versions_are_refused(tmp_path: Path, version: str, shown: str) -> None:
    header = {"format": "steerscope.vectors", "version": version, "metadata": "{}"}
    safetensors.torch.save_file(
        {"vectors": torch.ones(1, WIDTH)}, tmp_path / "v.safetensors", metadata=header
    )
    with pytest.raises(EngineError, match=f"format version {shown}"):
        load_vectors(tmp_path / "v.safetensors")


def test_over_limit_files_are_refused(tmp_path: Path) -> None:
    save_vectors(tmp_path / "v.safetensors", awkward(64))
    export_gguf(tmp_path / "v.gguf", {i: awkward(1, seed=i)[0] for i in range(1, 40)}, "llama")
    for path in (tmp_path / "v.safetensors", tmp_path / "v.gguf"):
        assert path.stat().st_size > 2048
        with pytest.raises(
            EngineError, match=f"is {path.stat().st_size:,} bytes, over the 2,048 bytes limit"
        ):
            load_any(path, max_bytes=2048)
        assert isinstance(load_any(path, max_bytes=path.stat().st_size), VectorFile)
    huge = tmp_path / "huge.safetensors"
    with huge.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    for read in READERS:
        with pytest.raises(EngineError, match="is 268,435,457 bytes, over the 256 MiB limit"):
            read(huge)  # type: ignore[operator]


def gguf_with_one_kv(key: bytes, kind: int, value: bytes) -> bytes:
    """A GGUF v3 header with no tensors and one KV pair, written by hand."""
    return (
        b"GGUF"
        + struct.pack("<IQQ", 3, 0, 1)
        + struct.pack("<Q", len(key))
        + key
        + struct.pack("<I", kind)
        + value
    )


def test_deeply_nested_arrays_are_refused(tmp_path: Path) -> None:
    nested = struct.pack("<IQ", 9, 1) * 5000  # arrays of arrays, 5000 deep
    (tmp_path / "deep.gguf").write_bytes(gguf_with_one_kv(b"deep", 9, nested))
    with pytest.raises(EngineError, match="too deeply nested"):
        import_gguf(tmp_path / "deep.gguf")


def test_bad_alignment_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(gguf_with_one_kv(b"general.alignment", 4, struct.pack("<I", 3)))
    with pytest.raises(EngineError, match=r"general\.alignment must be a power of two, got 3"):
        import_gguf(tmp_path / "a.gguf")
