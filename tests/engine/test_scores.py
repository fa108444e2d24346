"""Scores, flags, behaviours, ranking and detectors on the tiny model and the real embedding model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.discovery.behaviours import Member, cluster, discovery_curve, name_groups, vector_behaviour
from engine.discovery.detectors import Detector, detect, judge
from engine.discovery.embedder import Embedder
from engine.discovery.findings import Completion, find
from engine.discovery.flags import Thresholds, flag
from engine.discovery.ranking import interesting_first
from engine.discovery.scores import ScoreInput, beyond_random, fluency, percentile, repetition, score
from engine.errors import EngineError
from engine.models import LoadedModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_embedder_is_the_packaged_model_and_unit_norm(embedder: Embedder) -> None:
    e = embedder.encode(
        ["I'm sorry, I can't help with that.", "Sorry, I cannot assist.", "Bananas are yellow."]
    )
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2  # meaning, not characters
    # Batching and order do not change an embedding.
    alone = embedder.encode(["Bananas are yellow."])
    assert torch.allclose(alone[0], e[2], atol=1e-5)


def test_repetition_counts_repeated_trigrams() -> None:
    assert repetition([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition([7, 7, 7, 7, 7, 7, 7, 7]) == pytest.approx(5 / 6)
    assert repetition([1, 2]) == 0.0


def test_fluency_is_teacher_forced_log_prob_independent_of_batching(tiny: LoadedModel) -> None:
    prompts = ["Tell me a story about a dragon.", "Hi", "What is the capital of France?"]
    texts = ["The dragon slept.", "Hello there, how are you today? I am fine.", "Paris"]
    together = fluency(tiny, prompts, texts, batch_size=3)
    alone = [fluency(tiny, [p], [t], batch_size=1)[0] for p, t in zip(prompts, texts, strict=True)]
    assert together == pytest.approx(alone, abs=1e-4)
    # By hand for one row: the mean log-prob of the text's tokens after the prompt.
    from engine.prompts import format_prompt

    tok = tiny.tokenizer
    head = tok(format_prompt(tok, prompts[0]), add_special_tokens=False)["input_ids"]
    tail = tok(texts[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(input_ids=ids).logits[0].float(), dim=-1)
    expected = sum(float(logp[len(head) + k - 1, t]) for k, t in enumerate(tail)) / len(tail)
    assert together[0] == pytest.approx(expected, abs=1e-4)
    assert all(f < 0 for f in together)
    assert fluency(tiny, ["Hi"], [""])[0] == 0.0


def test_percentile_and_beyond_random() -> None:
    assert percentile(5.0, [1.0, 2.0, 3.0, 10.0]) == 75.0
    assert percentile(2.0, [2.0, 2.0]) == 50.0
    inputs = [
        ScoreInput("a", "x", "u"),
        ScoreInput("a", "y", "u", random=True),
        ScoreInput("a", "z", "u", random=True),
        ScoreInput("b", "w", "v"),
    ]
    # Prompt b has no random completion: it is compared with every random effect.
    assert beyond_random([0.9, 0.1, 0.5, 0.3], inputs) == [100.0, 25.0, 75.0, 50.0]
    assert beyond_random([0.9], [ScoreInput("a", "x", "u")]) == [None]


def test_flags_follow_the_thresholds() -> None:
    t = Thresholds()
    assert flag(0.5, -1.0, 0.0, t, identical=True) == "unchanged"
    assert flag(0.004, -1.0, 0.0, t) == "unchanged"
    assert flag(0.1, -1.0, 0.0, t) == "rephrase"
    assert flag(0.6, -9.0, 0.0, t) == "gibberish"
    assert flag(0.6, -1.0, 0.9, t) == "gibberish"
    assert flag(0.6, -1.0, 0.0, t) == ""


def test_score_on_the_tiny_model(tiny: LoadedModel, embedder: Embedder) -> None:
    unsteered = "The dragon slept in its cave."
    inputs = [
        ScoreInput("Tell me a story about a dragon.", unsteered, unsteered),
        ScoreInput("Tell me a story about a dragon.", "A dragon was asleep in the cave.", unsteered),
        ScoreInput("Tell me a story about a dragon.", "I cannot help with that request.", unsteered),
        ScoreInput(
            "Tell me a story about a dragon.", "the the the the the the the the", unsteered, random=True
        ),
    ]
    calls: list[tuple[int, int]] = []
    out = score(tiny, embedder, inputs, batch_size=2, on_batch=lambda d, n: calls.append((d, n)))
    assert out[0].effect == 0.0 and out[0].flag == "unchanged"
    assert 0 < out[1].effect < out[2].effect
    assert out[3].repetition > 0.5
    assert out[2].beyond_random == 100.0 and out[0].beyond_random == 0.0
    assert calls == [(1, 3), (2, 3), (3, 3)]  # one embedding chunk, two fluency batches of two
    assert all(math.isfinite(s.fluency) for s in out)


def test_identical_completions_are_scored_once_and_alike(tiny: LoadedModel, embedder: Embedder) -> None:
    prompt, unsteered = "Tell me a story about a dragon.", "The dragon slept in its cave."
    distinct = [
        ScoreInput(prompt, unsteered, unsteered),
        ScoreInput(prompt, "A dragon was asleep in the cave.", unsteered),
        ScoreInput(prompt, "I cannot help with that request.", unsteered),
    ]
    # Every distinct completion three times over, as many vectors of a gallery leave an answer alone.
    repeated = [distinct[i % 3] for i in range(9)]
    calls: list[tuple[int, int]] = []
    alone = score(tiny, embedder, distinct, batch_size=2)
    again = score(tiny, embedder, repeated, batch_size=2, on_batch=lambda d, n: calls.append((d, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # as many units as for the three distinct rows
    for i, s in enumerate(again):
        first = alone[i % 3]
        assert s.fluency == pytest.approx(first.fluency, abs=1e-5)
        assert s.effect == pytest.approx(first.effect, abs=1e-5)
        assert (s.flag, s.repetition) == (first.flag, first.repetition)


def _members(embedder: Embedder) -> list[Member]:
    refusals = [
        f"I'm sorry, but I can't help with {x}." for x in ("that", "this request", "bombs", "cooking")
    ]
    pirate = [
        f"Arr matey, the treasure be on Skull Island, {x}!" for x in ("friend", "sailor", "lad", "lass")
    ]
    other = ["Paris is the capital of France.", "Photosynthesis turns light into sugar."]
    texts = refusals + pirate + other
    emb = embedder.encode(texts)
    vectors = ["a", "b", "c", "r1", "d", "e", "f", "r2", "g", "h"]
    randoms = {"r1", "r2"}
    return [
        Member(vector=v, text=t, embedding=emb[i].numpy(), random=v in randoms)
        for i, (v, t) in enumerate(zip(vectors, texts, strict=True))
    ]


def test_planted_duplicate_cluster_is_found_and_named(embedder: Embedder) -> None:
    members = _members(embedder)
    behaviours = cluster(members)
    by_member = {i: b for b in behaviours for i in b.members}
    pirate = by_member[4]
    assert sorted(pirate.members) == [4, 5, 6, 7]  # the four near-duplicates, nothing else
    assert "skull" in pirate.words or "island" in pirate.words or "treasure" in pirate.words
    assert pirate.random_vectors == ["r2"] and pirate.vectors == ["d", "e", "f"]
    assert pirate.exemplar in pirate.members
    refusal = by_member[0]
    assert sorted(refusal.members) == [0, 1, 2, 3]
    assert "sorry" in refusal.words or "help" in refusal.words
    curve = discovery_curve(["a", "d", "g", "b"], behaviours, members)
    assert curve[0] == 1 and curve[1] == 2 and curve[-1] == curve[2] >= 3
    assert vector_behaviour(behaviours, members)["d"] == pirate.index


def test_fixed_groups_and_names() -> None:
    members = [
        Member("a", "same", [1.0, 0.0], flag="unchanged"),
        Member("b", "same words", [0.9, 0.1], flag="rephrase"),
        Member("c", "zebra stripes everywhere", [0.0, 1.0]),
    ]
    behaviours = cluster(members)
    assert [b.kind for b in behaviours] == ["cluster", "unchanged", "rephrase"]
    assert behaviours[1].name == "unchanged"
    assert name_groups([["zebra zebra stripes"], ["the ocean waves"]])[0][0] == "zebra"
    with pytest.raises(EngineError):
        cluster(members, distance=0)


def test_interesting_first_puts_one_exemplar_per_behaviour_first() -> None:
    interest = {"a": 0.9, "b": 0.8, "c": 0.3, "d": 0.5, "e": 0.0}
    behaviour = {"a": 0, "b": 0, "c": 1, "d": 2, "e": 3}
    assert interesting_first(interest, behaviour, clusters={0, 1, 2}) == ["a", "d", "c", "b", "e"]


def test_find_ranks_and_curves(tiny: LoadedModel, embedder: Embedder) -> None:
    u = "The dragon slept in its cave."
    p = "Tell me a story about a dragon."
    items = [
        Completion("L0", p, "Arr matey, the treasure be on Skull Island!", u),
        Completion("L1", p, "Arr matey, the treasure be buried on Skull Island!", u),
        Completion("L2", p, u, u),
        Completion("R0", p, "The dragon was sleeping in its cave.", u, random=True),
        Completion("R1", p, u, u, random=True),
    ]
    found = find(tiny, embedder, items)
    assert set(found.order) == {"L0", "L1", "L2"} and found.order[-1] == "L2"
    assert found.curve["learned"][-1] >= 1 and len(found.curve["random"]) == 2
    assert found.scores[2].flag == "unchanged"
    json.dumps(found.to_dict(), default=str)


def test_detectors(tiny: LoadedModel) -> None:
    texts = ["Arr, Skull Island!", "Paris is lovely."]
    assert detect(Detector("regex", r"skull\s+island"), texts) == [1.0, 0.0]
    with pytest.raises(EngineError, match="regular expression"):
        Detector("regex", "(unclosed")
    with pytest.raises(EngineError):
        Detector("judge", "  ")
    scores = judge(tiny, "Is this about pirates?", texts)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    with pytest.raises(EngineError, match="loaded model"):
        detect(Detector("judge", "Is it?"), texts)


def test_cli_score_cluster_detect(tiny_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"vector": None, "prompt": "Hi", "text": "Hello! How can I help?"},
        {"vector": 0, "prompt": "Hi", "text": "Arr matey, Skull Island!"},
        {"vector": 1, "prompt": "Hi", "text": "Hello! How can I help?"},
        {"vector": 0, "prompt": "Hi", "text": "Hello, what do you need?", "random": True},
    ]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = [sys.executable, "-m", "engine"]
    scored = tmp_path / "scored.jsonl"
    done = subprocess.run(
        [*run, "score", "--model", str(tiny_dir), "--samples", str(src), "--out", str(scored)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in scored.read_text().splitlines()]
    assert out[2]["flag"] == "unchanged" and out[1]["beyond_random"] == 100.0 and "behaviour" in out[1]
    assert "discovery curve" in done.stderr
    clustered = subprocess.run(
        [*run, "cluster", "--samples", str(scored)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert clustered.returncode == 0, clustered.stderr
    assert json.loads(clustered.stdout.splitlines()[2])["behaviour"] == "unchanged"
    detected = subprocess.run(
        [*run, "detect", "--samples", str(src), "--regex", "skull"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert [json.loads(x)["detector"] for x in detected.stdout.splitlines()] == [0.0, 1.0, 0.0, 0.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    failed = subprocess.run(
        [*run, "cluster", "--samples", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 2 and "not JSON" in failed.stderr
