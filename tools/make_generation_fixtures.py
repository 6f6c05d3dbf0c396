#!/usr/bin/env python3
"""Reference values for kiln's generation tests, computed with Hugging Face transformers.

Writes two small files under tests/fixtures:

* processors.json: fixed logits and a token history run through transformers' logits
  processors (repetition penalty, sequence bias = logit bias, temperature, top-k, top-p, min-p)
  and through OpenAI's presence/frequency penalty formula, one case per processor and a few
  chains in transformers' order.
* chat_templates.json: every template in ../shared/chat-templates rendered by transformers'
  own renderer (`render_jinja_template`, what `apply_chat_template(tokenize=False)` calls) for
  a handful of conversations, or the exception it raises.

Run from the repository root: python3 tools/make_generation_fixtures.py
(needs torch and transformers; never run in CI).
"""

import json
import math
import pathlib

import torch
from transformers.generation import logits_process as lp
from transformers.utils.chat_template_utils import render_jinja_template
import jinja2

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
OUT = ROOT / "tests" / "fixtures"


def enc(xs):
    """JSON has no infinities: -inf is written as null."""
    return [None if math.isinf(x) and x < 0 else float(x) for x in xs]


def processors():
    g = torch.Generator().manual_seed(1234)
    logits = (torch.randn(24, generator=g) * 3.0).float()
    # A tie at the top-k threshold and a zero logit exercise the edge cases.
    logits[5] = logits[7]
    logits[11] = 0.0
    history = [3, 5, 5, 11, 11, 11, 20, 2]
    generated = history[-5:]  # the tail of history that was sampled (for OpenAI penalties)
    ids = torch.tensor([history])

    def run(procs):
        x = logits.clone().unsqueeze(0)
        for p in procs:
            x = p(ids, x)
        return enc(x[0].tolist())

    def openai(presence, frequency):
        x = logits.clone()
        counts = {}
        for t in generated:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            x[t] -= c * frequency + presence
        return enc(x.tolist())

    bias = {3: 2.5, 9: -100.0, 17: 1.25}
    cases = [
        {"name": "repetition_penalty", "config": {"repetition_penalty": 1.3},
         "expected": run([lp.RepetitionPenaltyLogitsProcessor(1.3)])},
        {"name": "repetition_penalty_below_one", "config": {"repetition_penalty": 0.7},
         "expected": run([lp.RepetitionPenaltyLogitsProcessor(0.7)])},
        {"name": "logit_bias", "config": {"logit_bias": {str(k): v for k, v in bias.items()}},
         "expected": run([lp.SequenceBiasLogitsProcessor({(k,): v for k, v in bias.items()})])},
        {"name": "temperature", "config": {"temperature": 0.7},
         "expected": run([lp.TemperatureLogitsWarper(0.7)])},
        {"name": "top_k", "config": {"temperature": 1.0, "top_k": 6},
         "expected": run([lp.TopKLogitsWarper(6)])},
        {"name": "top_p", "config": {"temperature": 1.0, "top_p": 0.8},
         "expected": run([lp.TopPLogitsWarper(0.8)])},
        {"name": "top_p_small", "config": {"temperature": 1.0, "top_p": 0.05},
         "expected": run([lp.TopPLogitsWarper(0.05)])},
        {"name": "min_p", "config": {"temperature": 1.0, "min_p": 0.1},
         "expected": run([lp.MinPLogitsWarper(0.1)])},
        {"name": "presence_penalty", "config": {"presence_penalty": 0.8},
         "expected": openai(0.8, 0.0)},
        {"name": "frequency_penalty", "config": {"frequency_penalty": 0.6},
         "expected": openai(0.0, 0.6)},
        {"name": "chain", "config": {"repetition_penalty": 1.2, "temperature": 0.8, "top_k": 10,
                                      "top_p": 0.9, "min_p": 0.05},
         "expected": run([lp.RepetitionPenaltyLogitsProcessor(1.2), lp.TemperatureLogitsWarper(0.8),
                          lp.TopKLogitsWarper(10), lp.TopPLogitsWarper(0.9), lp.MinPLogitsWarper(0.05)])},
        {"name": "chain_bias_first", "config": {"logit_bias": {str(k): v for k, v in bias.items()},
                                                "repetition_penalty": 1.5, "temperature": 1.5, "top_k": 8},
         "expected": run([lp.SequenceBiasLogitsProcessor({(k,): v for k, v in bias.items()}),
                          lp.RepetitionPenaltyLogitsProcessor(1.5), lp.TemperatureLogitsWarper(1.5),
                          lp.TopKLogitsWarper(8)])},
    ]
    return {
        "logits": enc(logits.tolist()),
        "history": history,
        "generated": generated,
        "cases": cases,
    }


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = [
    {"name": "user", "messages": [{"role": "user", "content": "Hello there! Café?"}]},
    {"name": "system_user", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ]},
    {"name": "multi_turn", "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\nA short one."},
    ]},
    {"name": "no_generation_prompt", "add_generation_prompt": False, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]},
    {"name": "tools", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
    ]},
    {"name": "tool_call", "tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "name": "get_weather", "tool_call_id": "call_1", "content": "{\"temp\": 21.5}"},
    ]},
    {"name": "bad_roles", "messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]},
]


def chat_templates():
    cases = []
    for path in sorted((SHARED / "chat-templates").glob("*.jinja")):
        source = path.read_text()
        for conv in CONVERSATIONS:
            agp = conv.get("add_generation_prompt", True)
            extra = {"bos_token": "<s>", "eos_token": "</s>", "date_string": "26 Jul 2024"}
            case = {
                "template": path.name,
                "conversation": conv["name"],
                "messages": conv["messages"],
                "tools": conv.get("tools"),
                "add_generation_prompt": agp,
                "extra": extra,
            }
            try:
                case["expected"] = render_jinja_template(
                    [conv["messages"]], tools=conv.get("tools"), chat_template=source,
                    add_generation_prompt=agp, **extra)[0][0]
            except jinja2.exceptions.TemplateError as e:
                # raise_exception(...) raises TemplateError itself; its subclasses are other errors.
                raised = type(e) is jinja2.exceptions.TemplateError
                case["error"] = {"raised": raised, "message": str(e)}
            except Exception as e:  # noqa: BLE001 - any other failure of the template
                case["error"] = {"raised": False, "message": f"{type(e).__name__}: {e}"}
            cases.append(case)
    return cases


def main():
    (OUT / "processors.json").write_text(json.dumps(processors(), indent=1) + "\n")
    cases = chat_templates()
    (OUT / "chat_templates.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    errors = sum("error" in c for c in cases)
    print(f"processors.json; chat_templates.json: {len(cases)} cases, {errors} raise")


if __name__ == "__main__":
    main()
