"""Composed queries of the shapes world: a reference image, a text changing one or two attributes, and
the ground truth (every gallery image with the target attribute combination, one designated target).

Modification phrasings come from templates; the ones marked `held_out` are never used in anything a
method trains or selects on (captions, val queries) and appear only in test queries, which record it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zscir_train.world import WorldError
from zscir_train.world.attributes import ATTRIBUTES, ShapeSpec, values_of
from zscir_train.world.captions import article, synonym

TWO_CHANGES_PROBABILITY = 0.3
HELD_OUT_PROBABILITY = 0.35  # share of test queries phrased with held-out templates
MEMBERS_PER_SET = 6  # CIRR img_set size
MAX_CHANGE_DRAWS = 50  # changes tried per reference before it is skipped
SIZE_WORDS = {"small": ("smaller", "down", "shrink it"), "large": ("bigger", "up", "enlarge it")}


@dataclass(frozen=True)
class Template:
    """One phrasing of a change of `attribute`. Fields: {new}, {old} (words), {new_a} (with article)."""

    attribute: str
    text: str
    held_out: bool = False


TEMPLATES: tuple[Template, ...] = (
    Template("color", "make it {new}"),
    Template("color", "change the color to {new}"),
    Template("color", "in {new}"),
    Template("color", "{new} instead of {old}"),
    Template("color", "{new}"),
    Template("color", "recolor it {new}", held_out=True),
    Template("color", "paint it {new} rather than {old}", held_out=True),
    Template("shape", "turn the {old} into {new_a}"),
    Template("shape", "make it {new_a}"),
    Template("shape", "{new_a} instead of {old_a}"),
    Template("shape", "change the shape to {new_a}"),
    Template("shape", "replace the {old} with {new_a}", held_out=True),
    Template("shape", "swap the {old} for {new_a}", held_out=True),
    Template("background", "on a {new} background"),
    Template("background", "change the background to {new}"),
    Template("background", "put it on {new}"),
    Template("background", "against a {new} backdrop"),
    Template("background", "with a {new} background instead of a {old} one", held_out=True),
    Template("background", "move it onto {new}", held_out=True),
    Template("size", "make it {new}"),
    Template("size", "{new}"),
    Template("size", "{new} than before"),
    Template("size", "{verb}", held_out=True),
    Template("size", "scale it {direction}", held_out=True),
    Template("style", "as {new_a}"),
    Template("style", "in the style of {new_a}"),
    Template("style", "turn it into {new_a}"),
    Template("style", "make it {new_a}"),
    Template("style", "render it as {new_a}", held_out=True),
    Template("style", "redo it as {new_a}", held_out=True),
)
JOINERS = ("{} and {}", "{}, {}", "{} and also {}")


@dataclass
class Query:
    """One composed query. Names are gallery image names; `targets` lists every correct image."""

    reference: str
    target: str  # the designated target (CIRR target_hard, CIRCO target_img_id)
    targets: list[str]  # all gallery images with the target attributes, target first
    text: str
    reference_spec: ShapeSpec
    target_spec: ShapeSpec
    changed: list[str]
    held_out: bool
    members: list[str] = field(default_factory=list)  # CIRR img_set: reference, target and 4 distractors


def phrase(rng: np.random.Generator, template: Template, old: str, new: str) -> str:
    attribute = template.attribute
    if attribute == "size":
        comparative, direction, verb = SIZE_WORDS[new]
        return template.text.format(new=comparative, direction=direction, verb=verb)
    new_word, old_word = synonym(rng, attribute, new), synonym(rng, attribute, old)
    return template.text.format(
        new=new_word, old=old_word, new_a=f"{article(new_word)} {new_word}", old_a=f"{article(old_word)} {old_word}"
    )


def modification_text(
    rng: np.random.Generator, reference: ShapeSpec, target: ShapeSpec, changed: list[str], held_out: bool
) -> str:
    """The text of a change; with `held_out`, at least one part uses a held-out template."""
    parts = []
    for i, attribute in enumerate(changed):
        pool = [t for t in TEMPLATES if t.attribute == attribute]
        if not held_out:
            pool = [t for t in pool if not t.held_out]
        elif i == 0:
            pool = [t for t in pool if t.held_out]
        template = pool[int(rng.integers(len(pool)))]
        parts.append(phrase(rng, template, getattr(reference, attribute), getattr(target, attribute)))
    if len(parts) == 1:
        return parts[0]
    return JOINERS[int(rng.integers(len(JOINERS)))].format(*parts)


def sample_change(rng: np.random.Generator, reference: ShapeSpec) -> tuple[ShapeSpec, list[str]]:
    k = 2 if rng.random() < TWO_CHANGES_PROBABILITY else 1
    changed = sorted(rng.choice(ATTRIBUTES, size=k, replace=False).tolist(), key=ATTRIBUTES.index)
    changes = {}
    for attribute in changed:
        others = [v for v in values_of(attribute) if v != getattr(reference, attribute)]
        changes[attribute] = others[int(rng.integers(len(others)))]
    return reference.with_values(**changes), changed


def spec_codes(specs: list[ShapeSpec]) -> np.ndarray:
    """[N, A] integer codes of the attribute values (index in `values_of`)."""
    return np.array([[values_of(a).index(getattr(s, a)) for a in ATTRIBUTES] for s in specs], dtype=np.int64)


def _members(rng, reference: int, target: int, codes: np.ndarray) -> list[int]:
    """CIRR-style img_set (gallery indices): reference, target and the non-target images nearest to the
    target in attribute space (random among equals), shuffled."""
    distance = (codes != codes[target]).sum(axis=1)  # [N]
    distance[[reference, target]] = -1
    order = np.lexsort((rng.random(len(codes)), distance))
    distractors = [int(i) for i in order if distance[i] > 0][: MEMBERS_PER_SET - 2]
    members = [reference, target, *distractors]
    return [members[i] for i in rng.permutation(len(members))]


def build_queries(
    rng: np.random.Generator, gallery: dict[str, ShapeSpec], count: int, allow_held_out: bool
) -> list[Query]:
    """`count` queries whose reference and targets are images of `gallery` (name -> spec).

    A change whose target combination has no gallery image is redrawn (a reference with none in reach is
    skipped), so every query has a target.
    """
    gallery_names = list(gallery)
    codes = spec_codes(list(gallery.values()))
    position = {name: i for i, name in enumerate(gallery_names)}
    by_spec: dict[ShapeSpec, list[str]] = {}
    for name, spec in gallery.items():
        by_spec.setdefault(spec, []).append(name)
    queries = []
    for index in rng.permutation(len(gallery_names)):
        if len(queries) == count:
            break
        reference = gallery_names[int(index)]
        reference_spec = gallery[reference]
        for _ in range(MAX_CHANGE_DRAWS):
            target_spec, changed = sample_change(rng, reference_spec)
            if target_spec in by_spec:
                break
        else:
            continue  # nothing in this (small) gallery is one or two changes away from this reference
        matching = by_spec[target_spec]
        target = matching[int(rng.integers(len(matching)))]
        held_out = allow_held_out and rng.random() < HELD_OUT_PROBABILITY
        members = _members(rng, position[reference], position[target], codes)
        queries.append(
            Query(
                reference=reference,
                target=target,
                targets=[target, *(n for n in matching if n != target)],
                text=modification_text(rng, reference_spec, target_spec, changed, held_out),
                reference_spec=reference_spec,
                target_spec=target_spec,
                changed=changed,
                held_out=held_out,
                members=[gallery_names[i] for i in members],
            )
        )
    if len(queries) < count:
        raise WorldError(
            f"only {len(queries)} of {count} queries found a target in a gallery of {len(gallery)} images: "
            "generate larger splits or fewer queries."
        )
    return queries
