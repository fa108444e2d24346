"""The command line on the tiny model: files written, errors reported without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.cli.main import main
from engine.vectors import load_vectors


def test_train_then_generate(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, samples = tmp_path / "v.safetensors", tmp_path / "s.jsonl"
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    args = [
        "train",
        *model,
        "--prompt",
        "Tell me a story",
        "--n-vectors",
        "3",
        "--steps",
        "5",
        "--radius",
        "2",
    ]
    args += ["--source", "0", "--target", "3", "--out", str(out), "--samples", str(samples)]
    code = main([*args, "--max-new-tokens", "4"])
    assert code == 0
    file = load_vectors(out)
    assert file.vectors.shape == (3, 64)
    torch.testing.assert_close(file.vectors.norm(dim=1), torch.full((3,), 2.0))
    assert file.metadata["block"] == 0 and file.metadata["radius"] == 2.0
    assert file.metadata["spec"]["n_vectors"] == 3 and len(file.metadata["records"]) == 3
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["vector"] for r in rows] == [None, 0, 1, 2]

    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                *model,
                "--vectors",
                str(out),
                "--index",
                "1",
                "--prompt",
                "Hi",
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["steered"] for line in lines] == [False, True]


def test_bad_input_is_a_message_not_a_traceback(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.safetensors"
    model = ["--model", str(tiny_dir), "--device", "cpu"]
    assert main(["train", *model, "--prompt", "Hi", "--radius", "-1", "--out", str(out)]) == 2
    assert "R (radius) must be a finite number > 0" in capsys.readouterr().err
    assert main(["train", *model, "--prompt", "Hi", "--source", "9", "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["train", "--model", str(tmp_path / "missing"), "--prompt", "Hi", "--out", str(out)]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert not out.exists()


def test_chain_from_a_trained_vector(tiny_dir: Path, tmp_path: Path) -> None:
    vectors, chain = tmp_path / "v.safetensors", tmp_path / "c.safetensors"
    model = ["--model", str(tiny_dir), "--device", "cpu", "--prompt", "Tell me a story"]
    train = ["--n-vectors", "1", "--steps", "5", "--radius", "3", "--source", "0", "--target", "3"]
    assert main(["train", *model, *train, "--out", str(vectors)]) == 0
    grow = ["--vectors", str(vectors), "--target", "3", "--n-vectors", "3", "--steps", "20"]
    assert main(["chain", *model, *grow, "--out", str(chain)]) == 0
    file = load_vectors(chain)
    theta0 = load_vectors(vectors).vectors[0].double()
    assert file.metadata["block"] == 0 and len(file.metadata["chain"]["records"]) == len(file.vectors)
    assert float((file.vectors.double() @ theta0).abs().max()) < 1e-4 * float(theta0.norm()) ** 2


def test_refine_a_vector_from_a_file(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rpath, generalize and search read a vector from a file and write the new ones."""
    from engine.vectors import save_vectors

    start = torch.randn(64, generator=torch.Generator().manual_seed(0))
    source = tmp_path / "start.safetensors"
    save_vectors(source, (start / start.norm() * 4)[None], {"block": 1})
    common = [
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--prompt",
        "Tell me a story",
        "--vectors",
        str(source),
    ]
    capsys.readouterr()
    out = tmp_path / "path.safetensors"
    assert main(["rpath", *common, "--multiples", "2", "1", "--steps", "2", "--out", str(out)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [p["multiple"] for p in found["points"]] == [1.0, 2.0]
    file = load_vectors(out)
    torch.testing.assert_close(file.vectors.norm(dim=1), torch.tensor([4.0, 8.0]))
    assert file.metadata["block"] == 1 and file.metadata["rpath"]["points"][1]["multiple"] == 2.0

    out = tmp_path / "wider.safetensors"
    args = ["generalize", *common, "--held-out", "Name a colour", "--steps", "2", "--max-new-tokens", "3"]
    assert main([*args, "--out", str(out)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert set(found["objective"]) == {"before", "after"} and len(found["held_out"]) == 1
    assert load_vectors(out).vectors.shape == (1, 64)

    out = tmp_path / "found.safetensors"
    args = ["search", *common, "--regex", "t", "--budget", "3", "--population", "2", "--max-new-tokens", "3"]
    assert main([*args, "--out", str(out)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["tried"] == 3 and found["best_score"] >= found["start_score"]
    assert load_vectors(out).vectors.shape[0] == len(found["best"])

    assert main(["search", *common, "--out", str(out)]) == 2  # neither --regex nor --judge
    assert "--regex or --judge" in capsys.readouterr().err
    assert main(["generalize", *common, "--out", str(out)]) == 2
    assert "held-out" in capsys.readouterr().err
