"""`steerscope` from the shell: the same specs as the API, results in the same database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from sqlalchemy import func, select

from app.db import Database
from app.models import Run, Vector


def steerscope(tmp_path: Path, tiny_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STEERSCOPE_DATA_DIR": str(tmp_path / "data"),
        "STEERSCOPE_DEFAULT_MODEL": str(tiny_dir),
        "STEERSCOPE_WORKER_THREADS": "1",
        "STEERSCOPE_GALLERY_TOKENS": "4",
        "STEERSCOPE_HEARTBEAT_S": "0.2",
        "STEERSCOPE_CORPUS_BANK": "8",  # a reading's corpus: 8 bank prompts, 4 answer tokens each
        "STEERSCOPE_CORPUS_TOKENS": "4",
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, env=env, timeout=300
    )


def count(tmp_path: Path, table: type[Run] | type[Vector]) -> int:
    database = Database(f"sqlite:///{tmp_path / 'data' / 'steerscope.db'}")
    with database.session() as session:
        n = session.scalar(select(func.count()).select_from(table)) or 0
    database.close()
    return n


def test_train_then_chain_from_the_shell(tmp_path: Path, tiny_dir: Path) -> None:
    out = steerscope(
        tmp_path,
        tiny_dir,
        "train",
        "--prompts",
        "Tell me a story.",
        "--n-vectors",
        "2",
        "--steps",
        "5",
        "--no-orthogonal",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["job"]["status"] == "succeeded"
    assert result["run"]["spec"]["orthogonal"] is False and len(result["vectors"]) == 2
    assert "job 1" in out.stderr  # the tqdm bar
    first = result["vectors"][0]["id"]
    out = steerscope(
        tmp_path, tiny_dir, "chain", "--vector-id", str(first), "--json", '{"n_vectors": 1, "steps": 5}'
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run"]["parent_vector_id"] == first
    assert count(tmp_path, Vector) == 3


def test_bad_input_is_refused_with_a_message_and_writes_nothing(tmp_path: Path, tiny_dir: Path) -> None:
    assert steerscope(tmp_path, tiny_dir, "db", "upgrade").returncode == 0
    out = steerscope(tmp_path, tiny_dir, "train", "--prompts", "hi", "--source", "99")
    assert out.returncode == 2 and "source block 99 is out of range" in out.stderr
    out = steerscope(tmp_path, tiny_dir, "train", "--prompts", "hi", "--json", "{nope")
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    assert count(tmp_path, Run) == 0


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path, tiny_dir: Path) -> None:
    out = steerscope(tmp_path, tiny_dir, "serve", "--host", "0.0.0.0")
    assert out.returncode == 2 and "STEERSCOPE_TOKEN" in out.stderr


def test_export_and_import_from_the_shell(tmp_path: Path, tiny_dir: Path) -> None:
    out = steerscope(
        tmp_path, tiny_dir, "train", "--prompts", "Hi.", "--n-vectors", "1", "--method", "random"
    )
    vector = json.loads(out.stdout)["vectors"][0]
    assert "leaked" not in out.stderr  # the worker leaves nothing for the resource tracker to clean
    file = tmp_path / "v.safetensors"
    out = steerscope(tmp_path, tiny_dir, "export", "--vector-id", str(vector["id"]), "--out", str(file))
    assert out.returncode == 0, out.stderr
    out = steerscope(tmp_path, tiny_dir, "import", str(file))
    assert out.returncode == 0, out.stderr
    assert count(tmp_path, Vector) == 2
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04not a vector file")
    out = steerscope(tmp_path, tiny_dir, "import", str(tmp_path / "bad.pt"), "--block", "1")
    assert out.returncode == 2 and "pickle" in out.stderr
    assert count(tmp_path, Vector) == 2


def test_refining_a_vector_from_the_shell(tmp_path: Path, tiny_dir: Path) -> None:
    """A scale sweep and an R-path of a stored vector: `--vector-id` beside the API's fields."""
    out = steerscope(
        tmp_path, tiny_dir, "train", "--prompts", "Tell me a story.", "--n-vectors", "1", "--steps", "3"
    )
    assert out.returncode == 0, out.stderr
    vector = json.loads(out.stdout)["vectors"][0]["id"]
    out = steerscope(tmp_path, tiny_dir, "scale-sweep", "--vector-id", str(vector), "--scales", "0", "2")
    assert out.returncode == 0, out.stderr
    swept = json.loads(out.stdout)["run"]
    assert (swept["kind"], swept["parent_vector_id"], swept["spec"]["scales"]) == (
        "scale_sweep",
        vector,
        [0.0, 2.0],
    )
    assert [p["scale"] for p in swept["result"]["points"]] == [0.0, 2.0]
    out = steerscope(
        tmp_path, tiny_dir, "rpath", "--vector-id", str(vector), "--multiples", "1", "2", "--steps", "2"
    )
    assert out.returncode == 0, out.stderr
    path = json.loads(out.stdout)
    assert path["run"]["kind"] == "rpath" and len(path["vectors"]) == 2
    assert all(v["parent_id"] == vector for v in path["vectors"])
    runs = count(tmp_path, Run)
    out = steerscope(tmp_path, tiny_dir, "rpath", "--vector-id", "9999")
    assert out.returncode == 2 and "no vector 9999" in out.stderr
    out = steerscope(tmp_path, tiny_dir, "rpath", "--multiples", "1")
    assert out.returncode == 2 and "vector_id" in out.stderr
    assert count(tmp_path, Run) == runs


def test_adapters_from_the_shell_train_and_export_for_peft(tmp_path: Path, tiny_dir: Path) -> None:
    args = ("train", "--method", "adapter", "--prompts", "Tell me a story.", "--n-vectors", "1")
    out = steerscope(tmp_path, tiny_dir, *args, "--rank", "2", "--steps", "3")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["run"]["kind"] == "adapter" and result["vectors"][0]["adapter"]["rank"] == 2
    zipped = tmp_path / "adapter.zip"
    vector = str(result["vectors"][0]["id"])
    out = steerscope(
        tmp_path, tiny_dir, "export", "--vector-id", vector, "--format", "peft", "--out", str(zipped)
    )
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(zipped) as archive:
        config = json.loads(archive.read(f"adapter-{vector}/adapter_config.json"))
    assert config["r"] == config["lora_alpha"] == 2 and config["peft_type"] == "LORA"
    runs = count(tmp_path, Run)
    out = steerscope(tmp_path, tiny_dir, *args, "--rank", "0")
    assert out.returncode == 2 and "rank must be between 1 and 1024" in out.stderr
    assert count(tmp_path, Run) == runs


def test_a_concept_and_a_reading_from_the_shell(tmp_path: Path, tiny_dir: Path) -> None:
    out = steerscope(
        tmp_path,
        tiny_dir,
        "concept",
        "--positive",
        "a zebra",
        "two zebras",
        "--negative",
        "a sea",
        "two seas",
    )
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["run"]["kind"] == "concept" and len(made["vectors"]) == 1
    out = steerscope(tmp_path, tiny_dir, "concept", "--positive", "only one", "--negative", "a", "b")
    assert out.returncode == 2 and "positive" in out.stderr
    assert count(tmp_path, Run) == 1
    vector = str(made["vectors"][0]["id"])
    out = steerscope(tmp_path, tiny_dir, "dashboard", "--vector-id", vector, "--rank-by", "mean")
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout)
    assert read["run"]["result"]["dashboard"]["block"] == made["vectors"][0]["block"]
