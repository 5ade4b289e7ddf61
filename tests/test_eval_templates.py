"""Templates: the contract's syntax (`{placeholder}` or the placeholder written out), the fields each
benchmark fills, the encoders' form of a phi template, and the prompt style from the placeholder."""

from types import SimpleNamespace

import pytest

from zscir_eval.templates import (
    DOMAIN_TEMPLATE,
    LINCIR,
    LINCIR_TEMPLATE,
    PIC2WORD,
    PIC2WORD_TEMPLATE,
    RAW_CAPTION,
    BenchmarkTemplateError,
    check_template,
    default_template,
    phi_template,
    plain_text,
    prompt_style,
)
from zscir_infer.contract import TemplateError, fill_template
from zscir_infer.errors import ZscirError


@pytest.mark.parametrize("template", [LINCIR_TEMPLATE, "a photo of $ that {caption}"])
def test_the_placeholder_is_a_field_or_written_out(template):
    check_template(template, "cirr", "phi", "$")
    assert phi_template(template, "$") == "a photo of $ that {caption}"
    assert fill_template(phi_template(template, "$"), "is red", "$") == "a photo of $ that is red"


@pytest.mark.parametrize(
    ("template", "benchmark", "method", "message"),
    [
        ("a photo that {caption}", "cirr", "phi", "placeholder"),
        ("a photo of * that {caption}", "cirr", "phi", "placeholder"),  # Pic2Word's word for a `$` phi
        ("{placeholder} {colour}", "cirr", "slerp", "unknown field"),
        ("a photo of {placeholder}", "circo", "phi", "{caption}"),
        ("a {domain} of {placeholder} {caption}", "cirr", "phi", "{domain}"),
        ("a photo of {placeholder}", "imagenet-r", "phi", "{domain}"),
        ("a {domain} of {placeholder} {caption}", "imagenet-r", "phi", "{caption}"),
        ("a photo of {caption", "cirr", "text", "not a valid template"),
    ],
)
def test_templates_a_benchmark_cannot_fill_are_user_errors(template, benchmark, method, message):
    with pytest.raises(BenchmarkTemplateError, match=message) as info:
        check_template(template, benchmark, method, "$")
    assert isinstance(info.value, ZscirError) and isinstance(info.value, TemplateError)


def test_without_a_pseudo_token_the_placeholder_is_dropped():
    check_template(LINCIR_TEMPLATE, "cirr", "slerp", None)
    assert plain_text(LINCIR_TEMPLATE, "is red") == "a photo of that is red"
    assert plain_text(DOMAIN_TEMPLATE, domain="toy") == "a toy of"
    assert plain_text("{caption}", "is  red ") == "is  red "  # the tokenizer collapses whitespace itself


def test_literal_braces_survive_the_encoders_fill():
    template = phi_template("{{$}} a photo of {placeholder} that {caption}", "$")
    assert template == "{{$}} a photo of $ that {caption}"
    assert fill_template(template, "is {red}", "$") == "{$} a photo of $ that is {red}"


def test_the_prompt_style_follows_the_placeholder():
    assert prompt_style(SimpleNamespace(placeholder="*")) == PIC2WORD
    assert prompt_style(SimpleNamespace(placeholder="$")) == LINCIR
    assert prompt_style(SimpleNamespace(placeholder=None)) == LINCIR


def test_default_templates_follow_the_code_behind_the_published_numbers():
    # Pic2Word prompts CIRR and FashionIQ with its own template; its GeneCIS numbers come from LinCIR's
    # eval_genecis branch, which prompts every phi method with "a photo of $ that {caption}"
    assert default_template("cirr", "phi", PIC2WORD) == PIC2WORD_TEMPLATE
    assert default_template("fashioniq", "phi", PIC2WORD) == PIC2WORD_TEMPLATE
    assert default_template("genecis", "phi", PIC2WORD) == LINCIR_TEMPLATE
    assert default_template("genecis", "phi", LINCIR) == LINCIR_TEMPLATE
    assert default_template("genecis", "slerp", PIC2WORD) == RAW_CAPTION
    assert default_template("imagenet-r", "phi", PIC2WORD) == DOMAIN_TEMPLATE
