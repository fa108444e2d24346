"""Typed traits, the flags they change, behaviour names and the interest-0 rule of the ranking:
plain text in, no model needed."""

from __future__ import annotations

import pytest

from engine.discovery.behaviours import Member, cluster
from engine.discovery.flags import Thresholds, flag, near_empty
from engine.discovery.naming import trait_name
from engine.discovery.ranking import interesting_first
from engine.discovery.traits import differences, shared_trait, traits

RECIPE = (
    "To boil an egg, place it in a pot of cold water, bring the water to a boil and let it cook for "
    "about nine minutes."
)
LISTED = (
    "To boil an egg:\n1. Place it in a pot of cold water.\n2. Bring the water to a boil.\n"
    "3. Cook for nine minutes."
)


@pytest.mark.parametrize(
    ("text", "trait"),
    [
        ("I'm sorry, but I can't help with that request.", "refusal"),
        ("I cannot provide instructions for making weapons.", "refusal"),
        ("That would be illegal and I won't help.", "refusal"),
        ("I'm a helpful AI assistant named SmolLM.", "identity"),
        ("As an AI language model, I do not have feelings.", "identity"),
        ("Arr, I am a pirate and I sail the seas.", "identity"),
        (LISTED, "listing"),
        ("- flour\n- eggs\n- milk", "listing"),
        ("```python\ndef reverse(s):\n    return s[::-1]\n```", "code"),
        ("SELECT COUNT(*) FROM users;", "code"),
        ("Le chat est sur la table et il dort dans le jardin avec son ami.", "foreign"),
        ("Привет, как дела? Это очень хороший день сегодня.", "foreign"),
    ],
)
def test_each_trait_is_seen(text: str, trait: str) -> None:
    found = traits(text)
    assert getattr(found, trait), f"{trait} not seen in {text!r}"
    for other in {"refusal", "identity", "listing", "code", "foreign"} - {trait}:
        assert not getattr(found, other), f"{other} seen in {text!r}"


def test_plain_answers_have_no_trait() -> None:
    for text in (RECIPE, "The capital of Canada is Ottawa.", "Winter comes with snow and quiet nights."):
        found = traits(text)
        assert not (found.refusal or found.identity or found.listing or found.code or found.foreign), text


def test_differences_name_what_changed_between_two_answers() -> None:
    assert differences(RECIPE, RECIPE) == []
    assert differences(LISTED, RECIPE) == ["list"]
    assert differences(RECIPE, LISTED) == ["list"]  # a list that became prose changed too
    assert differences("Here's how: first, crack the egg.", "Eggs are a food.") == ["instructions"]
    assert "instructions" not in differences("Here's how: first, crack the egg.", LISTED)  # steps either way
    cut = "Here is a recipe.\n\n**Ingredients:**\n\n- 2 cups flour"  # cut off after one item
    assert "list" not in differences(cut, LISTED)
    assert differences("I'm sorry, I can't help with that.", RECIPE) == ["refusal", "short"]
    assert differences("Boil it.", RECIPE) == ["short"]
    assert "short" not in differences("Ottawa.", "The capital is Ottawa.")  # the partner was short already


def test_a_change_of_trait_is_never_a_rephrase_and_an_empty_answer_never_changed() -> None:
    t = Thresholds()
    assert flag(0.2, -1.0, 0.0, t) == "rephrase"
    assert flag(0.2, -1.0, 0.0, t, changes=["refusal"]) == ""
    assert flag(0.9, 0.0, 0.0, t, words=0, partner_words=30) == "gibberish"
    assert flag(0.9, -1.0, 0.0, t, words=0, partner_words=30) == "gibberish"  # punctuation, markup
    # One word is an answer ("SmolLM." to "Give me a recipe" changed what it does).
    assert flag(0.9, -1.0, 0.0, t, words=1, partner_words=30) == ""
    assert flag(0.9, -1.0, 0.0, Thresholds(near_empty_words=3), words=2, partner_words=30) == "gibberish"
    assert flag(0.9, -1.0, 0.0, t, words=0, partner_words=0) == ""  # the unsteered answer had no words
    assert flag(t.unchanged_effect / 2, 0.0, 0.0, t, words=0, partner_words=30) == "unchanged"
    assert not near_empty(None, 30, t) and near_empty(0, None, t)


def test_behaviours_are_named_by_a_shared_trait_with_the_words_as_subtitle() -> None:
    refusals = [
        "I'm sorry, I can't help with that.",
        "I cannot assist with this request, sorry.",
        "Sorry, I can't provide that.",
    ]
    ai = [
        "I'm a helpful AI assistant named SmolLM.",
        "I am an AI assistant made to help you.",
        "I'm your AI assistant.",
    ]
    loops = ["the sea the sea the sea the sea the sea the sea", "waves waves waves waves waves waves waves"]
    members = [Member(f"v{i}", t, [1.0, 0.0, 0.0], changes=("refusal",)) for i, t in enumerate(refusals)]
    members += [Member(f"w{i}", t, [0.0, 1.0, 0.0], changes=("identity",)) for i, t in enumerate(ai)]
    members += [Member(f"x{i}", t, [0.0, 0.0, 1.0], repetition=0.8) for i, t in enumerate(loops)]
    names = {b.name: b for b in cluster(members)}
    assert set(names) == {"refuses", "introduces itself as an AI", "repeats itself"}
    assert all(b.subtitle == " · ".join(b.words) and b.subtitle for b in names.values())
    assert names["refuses"].trait == "refuses" and names["refuses"].to_dict()["subtitle"]
    plain = cluster(
        [Member("p", "zebra stripes everywhere", [0.0, 1.0]), Member("q", "zebra zebra", [0.0, 1.0])]
    )
    assert plain[0].trait == "" and plain[0].name == plain[0].subtitle and "zebra" in plain[0].name


def test_trait_names_follow_the_direction_of_the_change() -> None:
    assert trait_name([RECIPE], [["refusal"]], [0.0]) == "stops refusing"
    assert trait_name([LISTED], [["list"]], [0.0]) == "answers with a list"
    assert trait_name(["Ahoy! I am a pirate captain."], [["identity"]], [0.0]) == "speaks as a persona"
    assert trait_name([RECIPE, RECIPE, LISTED], [[], [], ["list"]], [0.0, 0.0, 0.0]) == ""  # one of three
    assert shared_trait(["I'm sorry, I can't help.", "Sorry, I cannot help with that."]) == "refusal"


def test_a_vector_of_interest_zero_never_ranks_above_one_of_interest() -> None:
    # "z" alone in its behaviour (a gibberish cluster) used to come second as that behaviour's exemplar.
    interest = {"a": 0.9, "b": 0.8, "c": 0.1, "z": 0.0}
    behaviour = {"a": 0, "b": 0, "c": 0, "z": 1}
    order = interesting_first(interest, behaviour, clusters={0, 1})
    assert order == ["a", "b", "c", "z"]
    assert all(interest[v] > 0 for v in order[: order.index("z")])
