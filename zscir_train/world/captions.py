"""Captions that describe images of the shapes world, from varied templates and synonyms.

A caption mentions a subset of the attributes (`mention`); the unmentioned shape becomes a generic
noun ("a red shape on a black background"). Which attributes a caption mentions is what decides
whether it matches an image (`matches`), which the contrastive training uses for multi-positive
targets. Zero-shot prompts (`zero_shot_prompt`) are captions of this same grammar.
"""

from __future__ import annotations

import numpy as np

from zscir_train.world.attributes import ATTRIBUTES, VOCABULARY, ShapeSpec, name_of

GENERIC_NOUNS = ("shape", "object", "figure")
NEUTRAL_PREFIXES = ("", "", "a photo of ", "an image of ", "a picture of ", "there is ")
BACKGROUND_PHRASES = (
    " on a {} background",
    " against a {} backdrop",
    " over a {} background",
    " with a {} background",
    " on {}",
)
STYLE_PREFIXES = ("a {} of ",)
STYLE_SUFFIXES = (", drawn as a {}", " in the style of a {}", ", as a {}", ", shown as a {}")
STYLE_ADJECTIVES = {"render": "rendered", "sketch": "sketched", "mosaic": "mosaic", "neon": "neon"}
FULL_DESCRIPTION_PROBABILITY = 0.5
VOWELS = "aeiou"


def article(word: str) -> str:
    return "an" if word[:1] in VOWELS else "a"


def synonym(rng: np.random.Generator, attribute: str, value: str) -> str:
    words = VOCABULARY[attribute][value]
    return words[int(rng.integers(len(words)))]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def random_mention(rng: np.random.Generator) -> frozenset[str]:
    """Which attributes a caption mentions: all of them half of the time, else a random 1-4 subset."""
    if rng.random() < FULL_DESCRIPTION_PROBABILITY:
        return frozenset(ATTRIBUTES)
    k = int(rng.integers(1, len(ATTRIBUTES)))
    return frozenset(rng.choice(ATTRIBUTES, size=k, replace=False).tolist())


def noun_phrase(rng: np.random.Generator, spec: ShapeSpec, mention: frozenset[str], adjective: str = "") -> str:
    """'a small red star' in one of a few word orders; the style adjective (if any) goes first."""
    noun = synonym(rng, "shape", spec.shape) if "shape" in mention else _pick(rng, GENERIC_NOUNS)
    size = synonym(rng, "size", spec.size) if "size" in mention else ""
    color = synonym(rng, "color", spec.color) if "color" in mention else ""
    form = int(rng.integers(3))
    if form == 1 and color:  # "a small star colored red"
        words = [adjective, size, noun, f"colored {color}"]
    elif form == 2 and size:  # "a red star that is small"
        words = [adjective, color, noun, f"that is {size}"]
    else:
        words = [adjective, size, color, noun]
    text = " ".join(w for w in words if w)
    return f"{article(text)} {text}"


def describe(rng: np.random.Generator, spec: ShapeSpec, mention: frozenset[str]) -> str:
    """One caption of `spec` that mentions exactly the attributes in `mention`."""
    background = ""
    if "background" in mention:
        background = _pick(rng, BACKGROUND_PHRASES).format(synonym(rng, "background", spec.background))
    if "style" not in mention:
        core = noun_phrase(rng, spec, mention) + background
    else:
        style_word = synonym(rng, "style", spec.style)
        form = int(rng.integers(3))
        if form == 0:
            core = _pick(rng, STYLE_PREFIXES).format(style_word) + noun_phrase(rng, spec, mention) + background
        elif form == 1:
            core = noun_phrase(rng, spec, mention) + background + _pick(rng, STYLE_SUFFIXES).format(style_word)
        else:
            core = noun_phrase(rng, spec, mention, STYLE_ADJECTIVES[spec.style]) + background
    return _pick(rng, NEUTRAL_PREFIXES) + core


def random_caption(rng: np.random.Generator, spec: ShapeSpec) -> tuple[str, frozenset[str]]:
    mention = random_mention(rng)
    return describe(rng, spec, mention), mention


def matches(spec: ShapeSpec, described: ShapeSpec, mention: frozenset[str]) -> bool:
    """Whether a caption of `described` mentioning `mention` is true of an image of `spec`."""
    return all(getattr(spec, a) == getattr(described, a) for a in mention)


def zero_shot_prompt(attribute: str, value: str) -> str:
    """The prompt of one attribute value, e.g. 'a star', 'a red shape', 'a sketch of a shape'."""
    word = name_of(attribute, value)
    if attribute == "shape":
        return f"{article(word)} {word}"
    if attribute in ("color", "size"):
        return f"{article(word)} {word} shape"
    if attribute == "background":
        return f"a shape on a {word} background"
    return f"{article(word)} {word} of a shape"
