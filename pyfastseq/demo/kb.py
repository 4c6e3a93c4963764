"""The demo's knowledge base: real country facts from the ``countryinfo`` package.

Every fact is (subject, predicate, objects); the model learns to map a question to the key
``subject [SEP] predicate`` and the objects are looked up, as seed 001 does for KgCLUE. Each
predicate has five phrasings. The test split holds out whole subjects (the model must copy a name it
never produced in training) and one whole phrasing per predicate (it must generalise wording).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

# predicate surface form -> (countryinfo field, phrasings with {s} for the subject)
PREDICATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "capital": ("capital", (
        "what is the capital of {s}?", "which city is the capital of {s}?", "name the capital city of {s}.",
        "{s} has its capital in which city?", "where is the government of {s} seated?")),
    "currency": ("currencies", (
        "what currency is used in {s}?", "which currency does {s} use?", "what is the official currency of {s}?",
        "{s} uses which currency code?", "what money do people pay with in {s}?")),
    "official language": ("languages", (
        "what language is spoken in {s}?", "which languages are official in {s}?", "what do people speak in {s}?",
        "name an official language of {s}.", "in {s}, which language is used?")),
    "region": ("region", (
        "which continent is {s} in?", "what region of the world is {s} part of?", "{s} lies on which continent?",
        "what is the region of {s}?", "where in the world is {s}?")),
    "subregion": ("subregion", (
        "which subregion does {s} belong to?", "name the subregion of {s}.", "{s} is located in which subregion?",
        "what part of its continent is {s} in?", "in which area of the region is {s}?")),
    "demonym": ("demonym", (
        "what are people from {s} called?", "what is the demonym of {s}?", "how do you call a citizen of {s}?",
        "a person from {s} is called what?", "what do you call someone born in {s}?")),
    "calling code": ("callingCodes", (
        "what is the calling code of {s}?", "which phone prefix does {s} use?",
        "what is the international dialing code for {s}?", "to phone {s}, which code do you dial?",
        "what country code is used for calls to {s}?")),
    "internet domain": ("tld", (
        "what is the internet domain of {s}?", "which top level domain belongs to {s}?",
        "websites in {s} end with which domain?", "name the country code domain of {s}.",
        "what is the web suffix of {s}?")),
    "population": ("population", (
        "how many people live in {s}?", "what is the population of {s}?", "how populous is {s}?",
        "how many inhabitants does {s} have?", "what is the number of residents of {s}?")),
    "area": ("area", (
        "how large is {s}?", "what is the area of {s}?", "how big is {s} in square kilometres?",
        "what is the surface area of {s}?", "how much land does {s} cover?")),
    "bordering countries": ("borders", (
        "which countries border {s}?", "what are the neighbours of {s}?", "name the countries next to {s}.",
        "{s} shares borders with which countries?", "which nations neighbour {s}?")),
}
HELD_OUT_PHRASING = 4  # the last phrasing of every predicate appears only in the test split


@dataclass(frozen=True)
class Fact:
    subject: str
    predicate: str
    objects: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    text: str
    fact: Fact
    phrasing: int


def load_facts() -> list[Fact]:
    """Every non-empty (country, predicate) fact countryinfo ships, ~2,500 of them."""
    import countryinfo

    infos = [c.info() for c in countryinfo.all_countries()]
    names = {info["ISO"]["alpha3"]: info["name"] for info in infos if info.get("ISO")}
    facts = []
    for info in infos:
        subject = info["name"]
        for predicate, (field, _) in PREDICATES.items():
            value = info.get(field)
            if value in (None, "", [], 0):
                continue
            values = value if isinstance(value, list) else [value]
            if field == "borders":
                values = [names.get(code, code) for code in values]
            facts.append(Fact(subject, predicate, tuple(str(v) for v in values)))
    return facts


def split(facts: list[Fact], test_subject_share: float = 0.15, seed: int = 0) -> tuple[list[Question], list[Question]]:
    """(train, test): test holds every question about held-out subjects, and the held-out phrasing
    of every other subject; train has the remaining phrasings of the remaining subjects."""
    subjects = sorted({f.subject for f in facts})
    rng = random.Random(seed)
    held_out = set(rng.sample(subjects, round(len(subjects) * test_subject_share)))
    train, test = [], []
    for fact in facts:
        for index, phrasing in enumerate(PREDICATES[fact.predicate][1]):
            question = Question(phrasing.format(s=fact.subject), fact, index)
            (test if fact.subject in held_out or index == HELD_OUT_PHRASING else train).append(question)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def majority_predicate_baseline(train: list[Question], test: list[Question], subjects: list[str]) -> float:
    """EM of a trivial system: the longest KB subject named in the question, and the predicate most
    frequent in training."""
    predicate = Counter(q.fact.predicate for q in train).most_common(1)[0][0]
    by_length = sorted(subjects, key=len, reverse=True)
    hits = 0
    for q in test:
        subject = next((s for s in by_length if s.lower() in q.text.lower()), None)
        hits += (subject, predicate) == (q.fact.subject, q.fact.predicate)
    return hits / max(len(test), 1)
