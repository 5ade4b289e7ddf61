"""The prompts each paper used per benchmark, and how a template becomes the text of a query.

A template is a Python format string with the fields `{placeholder}` (the pseudo-token word, `$` for
LinCIR/SEARLE, `*` for Pic2Word; it comes from the encoder), `{caption}` (the relative caption; for
FashionIQ the two captions joined with " and ") and, for ImageNet-R, `{domain}`.

Methods without a pseudo-token (slerp and the baselines) render `{placeholder}` as nothing: the text
encoder sees the caption alone, as Slerp and the papers' text-only baselines do.
"""

from __future__ import annotations

import re
import string

PHI_METHODS = ("phi",)
METHODS = ("phi", "slerp", "image", "text", "average")
LINCIR, PIC2WORD = "lincir", "pic2word"

LINCIR_TEMPLATE = "a photo of {placeholder} that {caption}"  # LinCIR, SEARLE (validate.py, GeneCIS eval)
PIC2WORD_TEMPLATE = "a photo of {placeholder} , {caption}"  # Pic2Word data.py (CIRR, FashionIQ)
DOMAIN_TEMPLATE = "a {domain} of {placeholder}"  # Pic2Word ImageNet-R domain conversion
RAW_CAPTION = "{caption}"  # Slerp and the text/average baselines

# FashionIQ caption orders: LinCIR encodes "c1 and c2" and "c2 and c1" and averages the two normalized
# features; Pic2Word's data.py encodes "c2 and c1" only; the other methods use the captions in order.
BOTH_ORDERS, REVERSED_ORDER, GIVEN_ORDER = ((0, 1), (1, 0)), ((1, 0),), ((0, 1),)

TEMPLATE_FIELDS = {"placeholder", "caption", "domain"}
CAPTION_FIELD = "{caption}"


def prompt_style(encoder) -> str:
    """Which paper's prompts fit this encoder: Pic2Word for an IM2TEXT phi or a `*` placeholder."""
    kind = getattr(encoder, "phi_kind", None) or getattr(getattr(encoder, "meta", None), "phi_kind", None)
    if kind == PIC2WORD or getattr(encoder, "placeholder", None) == "*":
        return PIC2WORD
    return LINCIR


def default_template(benchmark: str, method: str, style: str) -> str:
    """The paper's template for this benchmark, method and prompt style."""
    if benchmark == "imagenet-r":
        return DOMAIN_TEMPLATE
    if method not in PHI_METHODS:
        return RAW_CAPTION
    return PIC2WORD_TEMPLATE if style == PIC2WORD else LINCIR_TEMPLATE


def fashioniq_orders(method: str, style: str) -> tuple[tuple[int, int], ...]:
    """The caption orders whose query features are averaged for one FashionIQ query."""
    if method not in PHI_METHODS:
        return GIVEN_ORDER
    return REVERSED_ORDER if style == PIC2WORD else BOTH_ORDERS


def check_template(template: str, benchmark: str, method: str) -> None:
    """Refuse a template with unknown fields, or without the fields the benchmark and method fill."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"Template {template!r} has unknown field(s) {sorted(unknown)}; use {{placeholder}}, "
            "{caption} and, for imagenet-r, {domain}."
        )
    needed, unfilled = ("domain", "caption") if benchmark == "imagenet-r" else ("caption", "domain")
    if needed not in fields:
        raise ValueError(f"Template {template!r} lacks {{{needed}}}, which {benchmark} fills.")
    if unfilled in fields:
        raise ValueError(f"Template {template!r} has {{{unfilled}}}, which {benchmark} has no value for.")
    if method in PHI_METHODS and "placeholder" not in fields:
        raise ValueError(
            f"Template {template!r} has no {{placeholder}}: method 'phi' needs it where the image token goes, "
            "e.g. 'a photo of {placeholder} that {caption}'."
        )


def phi_template(template: str, placeholder: str | None, domain: str = "") -> str:
    """The template in the encoders' form: the placeholder written out, `{caption}` left to be filled.

    The runtime and the PyTorch reference fill `{caption}` themselves and require the placeholder in the
    template; a template without a caption (ImageNet-R) gets an empty `{caption}` at its end.
    """
    if not placeholder:
        raise ValueError("method 'phi' needs an encoder with a placeholder (a phi bundle or checkpoint).")
    text = template.format(placeholder=placeholder, caption=CAPTION_FIELD, domain=domain)
    return text if CAPTION_FIELD in text else text + CAPTION_FIELD


def plain_text(template: str, caption: str = "", domain: str = "") -> str:
    """The text of a query for the methods without a pseudo-token: the placeholder dropped."""
    text = template.format(placeholder="", caption=caption, domain=domain)
    return re.sub(r"\s+", " ", text).strip()
