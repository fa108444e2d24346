"""A generic prompt bank: everyday topics asked in ordinary ways, the text a vector's dashboard
searches for where its direction occurs (engine/discovery/corpus.py).

Written by hand for no model and no planted behaviour: 128 topics in 16 areas of everyday life,
each asked in 10 of 16 frames (a different 10 per topic, by rotation), 1,280 prompts in all. Things
people do get one set of frames, things people learn about another, so that every prompt reads
naturally. The order is fixed: a prompt keeps its index
for as long as BANK_VERSION is unchanged (change the version whenever the lists change).
"""

from __future__ import annotations

from dataclasses import dataclass

BANK_VERSION = 1
FRAMES_PER_TOPIC = 10

# Frames for things people do, own or use.
PRACTICE_FRAMES = (
    "Tell me about {}.",
    "What should a beginner know about {}?",
    "Explain {} in simple terms.",
    "What are common mistakes people make with {}?",
    "Give me three practical tips about {}.",
    "What is the history of {}?",
    "Write a short paragraph about {}.",
    "What do people often get wrong about {}?",
    "How have attitudes to {} changed over the last twenty years?",
    "What is the best way to get started with {}?",
    "Summarize the basics of {} for me.",
    "Write a short poem about {}.",
    "What are the pros and cons of {}?",
    "I'm writing an essay on {}. What points should I cover?",
    "What is one surprising fact about {}?",
    "How would you explain {} to a ten-year-old?",
)
# Frames for things people learn about (nature, science, history).
SUBJECT_FRAMES = (
    "Tell me about {}.",
    "Explain {} in simple terms.",
    "What is one surprising fact about {}?",
    "Write a short paragraph about {}.",
    "Write a short poem about {}.",
    "How would you explain {} to a ten-year-old?",
    "I'm writing an essay on {}. What points should I cover?",
    "What do people often get wrong about {}?",
    "Summarize what is known about {}.",
    "What are the most important ideas behind {}?",
    "Give me three interesting facts about {}.",
    "Why does {} matter?",
    "What would a good documentary about {} cover?",
    "Describe {} in a few sentences.",
    "How can I learn more about {}?",
    "What should everyone know about {}?",
)
SUBJECT_AREAS = ("nature", "science", "history")

# (area, topics): each topic is a noun phrase that fits every frame.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "food",
        (
            "baking sourdough bread",
            "making fresh pasta",
            "brewing coffee at home",
            "growing herbs on a windowsill",
            "cooking rice",
            "meal planning for the week",
            "fermenting vegetables",
            "grilling in the summer",
        ),
    ),
    (
        "home",
        (
            "painting a bedroom",
            "decluttering a closet",
            "fixing a squeaky door",
            "keeping houseplants alive",
            "doing laundry",
            "cleaning an oven",
            "choosing a mattress",
            "insulating an old house",
        ),
    ),
    (
        "health",
        (
            "getting enough sleep",
            "stretching after exercise",
            "drinking enough water",
            "managing seasonal allergies",
            "taking care of your teeth",
            "posture at a desk",
            "recovering from a cold",
            "walking every day",
        ),
    ),
    (
        "money",
        (
            "making a monthly budget",
            "saving for retirement",
            "paying off a credit card",
            "index funds",
            "filing income taxes",
            "buying a used car",
            "renting an apartment",
            "building an emergency fund",
        ),
    ),
    (
        "work",
        (
            "job interviews",
            "writing a cover letter",
            "asking for a raise",
            "working from home",
            "running a team meeting",
            "changing careers",
            "giving feedback to a colleague",
            "managing email",
        ),
    ),
    (
        "travel",
        (
            "packing a carry-on bag",
            "traveling by train in Europe",
            "visiting Japan",
            "jet lag",
            "camping in a national park",
            "booking cheap flights",
            "road trips",
            "learning phrases before a trip",
        ),
    ),
    (
        "technology",
        (
            "choosing a laptop",
            "backing up photos",
            "password managers",
            "home Wi-Fi networks",
            "smartphone batteries",
            "learning to code in Python",
            "spreadsheets",
            "video calls",
        ),
    ),
    (
        "nature",
        (
            "the water cycle",
            "bird migration",
            "thunderstorms",
            "coral reefs",
            "autumn leaves",
            "mushrooms in the forest",
            "ocean tides",
            "deserts",
        ),
    ),
    (
        "science",
        (
            "gravity",
            "the solar system",
            "electricity in the home",
            "how vaccines work",
            "DNA",
            "magnets",
            "the speed of light",
            "chemical reactions in cooking",
        ),
    ),
    (
        "sport",
        (
            "running a first marathon",
            "learning to swim as an adult",
            "playing tennis",
            "playing football",
            "cycling to work",
            "yoga for beginners",
            "rock climbing",
            "weightlifting",
        ),
    ),
    (
        "arts",
        (
            "learning the piano",
            "watercolor painting",
            "writing short stories",
            "photography with a phone",
            "knitting a scarf",
            "listening to jazz",
            "going to the theatre",
            "pottery",
        ),
    ),
    (
        "learning",
        (
            "studying for exams",
            "learning a second language",
            "taking notes in class",
            "reading more books",
            "online courses",
            "memorizing facts",
            "writing a research paper",
            "using a public library",
        ),
    ),
    (
        "people",
        (
            "making friends in a new city",
            "planning a wedding",
            "raising a toddler",
            "caring for elderly parents",
            "apologizing well",
            "hosting a dinner party",
            "long-distance friendships",
            "talking with teenagers",
        ),
    ),
    (
        "transport",
        (
            "learning to drive",
            "electric cars",
            "public buses",
            "maintaining a bicycle",
            "commuting by subway",
            "changing a flat tire",
            "airports",
            "car insurance",
        ),
    ),
    (
        "pets",
        (
            "adopting a dog from a shelter",
            "training a puppy",
            "keeping an aquarium",
            "caring for a pet cat",
            "keeping backyard chickens",
            "choosing a vet",
            "pet rabbits",
            "walking a dog in winter",
        ),
    ),
    (
        "history",
        (
            "the Roman Empire",
            "the printing press",
            "the invention of the telephone",
            "ancient Egypt",
            "the Industrial Revolution",
            "the Silk Road",
            "medieval castles",
            "the first moon landing",
        ),
    ),
)


@dataclass(frozen=True)
class BankPrompt:
    text: str
    area: str
    topic: str
    frame: int  # index into its area's frames


def bank_prompts(limit: int | None = None) -> list[BankPrompt]:
    """The bank in its fixed order, or its first `limit` prompts (every topic once before any twice)."""
    topics = [(area, topic) for area, ts in AREAS for topic in ts]
    rows: list[BankPrompt] = []
    for j in range(FRAMES_PER_TOPIC):  # round j asks every topic once, so a prefix covers all topics
        for i, (area, topic) in enumerate(topics):
            frames = SUBJECT_FRAMES if area in SUBJECT_AREAS else PRACTICE_FRAMES
            frame = (i * 3 + j) % len(frames)
            rows.append(BankPrompt(frames[frame].format(topic), area, topic, frame))
    return rows if limit is None else rows[:limit]
