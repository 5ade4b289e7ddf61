"""The prompts each paper used per benchmark, and how a template becomes the text of a query.

The template syntax is the contract's (`zscir_infer.contract.fill_template`), the one `zscir-infer query
--template` takes: `{caption}` (the relative caption; for FashionIQ the two captions joined with
" and "), `{placeholder}` or the placeholder written out (`$` for LinCIR/SEARLE, `*` for Pic2Word; it
comes from the encoder) and, for ImageNet-R, `{domain}`. What is specific to the benchmarks lives here:
the papers' default templates, which fields each benchmark fills, and FashionIQ's caption orders.

Methods without a pseudo-token (slerp and the baselines) render `{placeholder}` as nothing: the text
encoder sees the caption alone, as Slerp and the papers' text-only baselines do.
"""

from __future__ import annotations

from zscir_eval.encoder import QueryEncoder
from zscir_infer.contract import (
    CAPTION_FIELD,
    LINCIR,
    PHI,
    PIC2WORD,
    TemplateError,
    fill_template,
    template_fields,
)
from zscir_infer.errors import ZscirError

LINCIR_TEMPLATE = "a photo of {placeholder} that {caption}"  # LinCIR, SEARLE (validate.py, GeneCIS eval)
PIC2WORD_TEMPLATE = "a photo of {placeholder} , {caption}"  # Pic2Word data.py (CIRR, FashionIQ)
DOMAIN_TEMPLATE = "a {domain} of {placeholder}"  # Pic2Word ImageNet-R domain conversion
RAW_CAPTION = CAPTION_FIELD  # Slerp and the text/average baselines
PIC2WORD_PLACEHOLDER = "*"  # BPE id 265; LinCIR and SEARLE use `$`
DOMAIN_BENCHMARK = "imagenet-r"  # the one benchmark that fills {domain} (and no caption)
CHECKED_DOMAIN = "cartoon"  # any ImageNet-R domain, to try a template before encoding
CAPTION_MARK = "\0caption\0"  # stands for the caption while the other fields are filled

GENECIS_BENCHMARK = "genecis"  # LinCIR's eval_genecis branch: LINCIR_TEMPLATE for every phi method

# FashionIQ caption orders: LinCIR encodes "c1 and c2" and "c2 and c1" and averages the two normalized
# features; Pic2Word's data.py encodes "c2 and c1" only; the other methods use the captions in order.
BOTH_ORDERS, REVERSED_ORDER, GIVEN_ORDER = ((0, 1), (1, 0)), ((1, 0),), ((0, 1),)


class BenchmarkTemplateError(TemplateError, ZscirError):
    """A template this benchmark or method cannot use; the message says what to write instead."""


def prompt_style(encoder: QueryEncoder) -> str:
    """Which paper's prompts fit this encoder: Pic2Word's for its `*` placeholder, else LinCIR's."""
    return PIC2WORD if encoder.placeholder == PIC2WORD_PLACEHOLDER else LINCIR


def default_template(benchmark: str, method: str, style: str) -> str:
    """The template of the code behind the published numbers, for this benchmark, method and prompt style.

    GeneCIS: Pic2Word's own code has no GeneCIS evaluation; its published GeneCIS numbers come from
    LinCIR's eval_genecis branch, which prompts every phi method with `a photo of $ that {caption}`.
    """
    if benchmark == DOMAIN_BENCHMARK:
        return DOMAIN_TEMPLATE
    if method != PHI:
        return RAW_CAPTION
    if benchmark == GENECIS_BENCHMARK:
        return LINCIR_TEMPLATE
    return PIC2WORD_TEMPLATE if style == PIC2WORD else LINCIR_TEMPLATE


def fashioniq_orders(method: str, style: str) -> tuple[tuple[int, int], ...]:
    """The caption orders whose query features are averaged for one FashionIQ query."""
    if method != PHI:
        return GIVEN_ORDER
    return REVERSED_ORDER if style == PIC2WORD else BOTH_ORDERS


def fashioniq_clean(method: str, style: str) -> bool:
    """Whether FashionIQ captions are stripped of `.?, ` before joining: LinCIR and SEARLE strip them
    (validate.py), Pic2Word's data.py joins them raw. Slerp and the baselines, which have no official
    FashionIQ code of their own, follow LinCIR/SEARLE, whose caption order they share."""
    return not (method == PHI and style == PIC2WORD)


def check_template(template: str, benchmark: str, method: str, placeholder: str | None) -> None:
    """Refuse, before anything is encoded, a template the benchmark and method cannot fill.

    ImageNet-R fills `{domain}` and has no caption; the other benchmarks fill `{caption}` and have no
    domain; method 'phi' needs the placeholder (as `{placeholder}` or written out).
    """
    try:
        fields = template_fields(template)
        if benchmark == DOMAIN_BENCHMARK and "domain" not in fields:
            raise TemplateError(f"Template {template!r} lacks {{domain}}, which {benchmark} fills.")
        if benchmark == DOMAIN_BENCHMARK and "caption" in fields:
            raise TemplateError(f"Template {template!r} has {{caption}}, which {benchmark} has no value for.")
        domain = CHECKED_DOMAIN if benchmark == DOMAIN_BENCHMARK else None
        fill_template(template, "", placeholder if method == PHI else None, domain)
    except TemplateError as exc:
        raise BenchmarkTemplateError(str(exc)) from exc


def phi_template(template: str, placeholder: str, domain: str | None = None) -> str:
    """The template in the encoders' form: the placeholder written out, `{caption}` left to be filled.

    The runtime and the PyTorch reference fill `{caption}` themselves (with `fill_template`); a
    template without a caption (ImageNet-R, its domain filled here) gets an empty `{caption}` at its end.
    """
    text = fill_template(template, CAPTION_MARK, placeholder, domain)
    text = text.replace("{", "{{").replace("}", "}}")  # literal braces stay literal in the second fill
    return text.replace(CAPTION_MARK, CAPTION_FIELD) if CAPTION_MARK in text else text + CAPTION_FIELD


def plain_text(template: str, caption: str = "", domain: str | None = None) -> str:
    """The text of a query for the methods without a pseudo-token: the placeholder dropped."""
    return fill_template(template, caption, None, domain)
