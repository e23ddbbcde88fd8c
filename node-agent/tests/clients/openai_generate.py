#!/usr/bin/env python3
"""Drives an OpenAI-compatible endpoint (a webaccel agent or gateway) with the stock
`openai` client from PyPI, at its default settings, and checks what it generates against
onnxruntime's greedy generations of the same decoder (fixtures/models/decoder/
reference.json, written by decoder_reference.py; never against webaccel itself).

Usage: openai_generate.py URL MODELS_DIR [--token T] [--model NAME]

The endpoint must serve the fixture decoder (models/decoder) as NAME with its tokenizer.
Exits non-zero with the reason on the first mismatch; prints one line per check.
"""

import argparse
import concurrent.futures
import json
import math
import os
import subprocess
import sys

import openai

# Beside this script; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
from checks import check, fail  # noqa: E402


def log_softmax(row):
    top = max(row)
    total = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - total for v in row]


def reference_prompt_logprobs(models, ids):
    """onnxruntime's scores of a prompt's tokens after the first (decoder_reference.py)."""
    job = {"model": os.path.join(models, "decoder", "model.onnx"), "prompts": [ids],
           "max_new_tokens": 1, "prompt_logprobs": True}
    script = os.path.join(models, "..", "decoder_reference.py")
    out = subprocess.run([sys.executable, script], input=json.dumps(job), capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)[0]["prompt_logprobs"]


def stream_text(client, **kwargs):
    """The text, finish reason and usage of a streamed completion, and how many chunks."""
    text, finish, usage, chunks = [], None, None, 0
    for chunk in client.completions.create(stream=True, **kwargs):
        chunks += 1
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage, chunks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("models")
    ap.add_argument("--token", default="none")
    ap.add_argument("--model", default="llm")
    args = ap.parse_args()
    with open(os.path.join(args.models, "decoder", "reference.json")) as f:
        ref = json.load(f)
    prompts = {p["name"]: p for p in ref["prompts"]}
    n = ref["max_new_tokens"]
    client = openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.token)
    model = args.model

    listed = [m.id for m in client.models.list().data]
    check(model in listed, f"models: {model} in {listed}")

    # Greedy completions are onnxruntime's, streamed or not.
    for name in ("story", "browser"):
        p = prompts[name]
        out = client.completions.create(model=model, prompt=p["text"], max_tokens=n, temperature=0)
        got = out.choices[0].text
        check(got == p["completion"], f"greedy {name}: {got!r} != {p['completion']!r}")
        check(out.choices[0].finish_reason == "length", f"finish {name}: {out.choices[0].finish_reason}")
        check(
            out.usage.prompt_tokens == len(p["input_ids"]) and out.usage.completion_tokens == n,
            f"usage {name}: {out.usage}",
        )
        text, finish, usage, chunks = stream_text(
            client, model=model, prompt=p["text"], max_tokens=n, temperature=0,
            stream_options={"include_usage": True},
        )
        check(text == p["completion"] and finish == "length", f"stream {name}: {text!r} {finish}")
        check(chunks > n // 2, f"stream chunks {name}: {chunks} chunks for {n} tokens")
        check(usage is not None and usage.completion_tokens == n, f"stream usage {name}: {usage}")

    # A chat renders through the tokenizer's template and stops at <|eot_id|>, which is
    # not part of the text.
    chat = prompts["chat"]
    want = chat["completion"].split("<|eot_id|>")[0]
    out = client.chat.completions.create(model=model, messages=chat["messages"], max_tokens=n, temperature=0)
    got = out.choices[0].message.content
    check(got == want, f"chat: {got!r} != {want!r}")
    check(out.choices[0].finish_reason == "stop", f"chat finish: {out.choices[0].finish_reason}")
    check(
        out.usage.prompt_tokens == len(chat["input_ids"]) and out.usage.completion_tokens == chat["first_eos_step"] + 1,
        f"chat usage: {out.usage}",
    )
    parts, finish = [], None
    for chunk in client.chat.completions.create(
        model=model, messages=chat["messages"], max_tokens=n, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(parts) == want and finish == "stop", f"chat stream: {''.join(parts)!r} {finish}")
    # Past the end-of-sequence token (vLLM's ignore_eos), the reference goes on.
    out = client.completions.create(
        model=model, prompt=chat["text"], max_tokens=n, temperature=0, extra_body={"ignore_eos": True}
    )
    check(out.choices[0].text.endswith(chat["completion"].split("<|eot_id|>")[1]), f"ignore_eos: {out.choices[0].text!r}")

    # Log-probabilities are onnxruntime's logits, log-softmaxed.
    p = prompts["browser"]
    steps = len(p["logits"])
    out = client.completions.create(model=model, prompt=p["text"], max_tokens=steps, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    for step in range(steps):
        want_lp = log_softmax(p["logits"][step])
        token = p["tokens"][step]
        check(abs(lp.token_logprobs[step] - want_lp[token]) < 1e-3, f"logprob {step}: {lp.token_logprobs[step]} vs {want_lp[token]}")
        best = sorted(want_lp, reverse=True)[:3]
        got_top = sorted(lp.top_logprobs[step].values(), reverse=True)
        check(
            len(got_top) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(got_top, best)),
            f"top logprobs {step}: {got_top} vs {best}",
        )

    # Echo with logprobs scores the prompt (what perplexity is made of): None for the
    # first token, then onnxruntime's scores; the text starts with the prompt. Streamed,
    # the first chunk carries them.
    p = prompts["story"]
    want = reference_prompt_logprobs(args.models, p["input_ids"])
    kwargs = dict(model=model, prompt=p["text"], max_tokens=2, temperature=0, echo=True, logprobs=0)
    out = client.completions.create(**kwargs)
    text, lp = out.choices[0].text, out.choices[0].logprobs
    got = []
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            if choice.logprobs:
                got += choice.logprobs.token_logprobs
    for name, scores in (("echo", lp.token_logprobs), ("echo stream", got)):
        check(len(scores) == len(p["input_ids"]) + 2, f"{name} tokens: {len(scores)} for {len(p['input_ids'])} + 2")
        check(scores[0] is None, f"{name} first: {scores[0]}")
        worst = max(abs(a - b) for a, b in zip(scores[1:len(want) + 1], want))
        check(worst < 1e-3, f"{name} prompt logprobs: off by {worst}")
    check(text.startswith(p["text"]) and p["completion"].startswith(text[len(p["text"]):]), f"echo text: {text!r}")
    ppl = math.exp(-sum(want) / len(want))
    got_ppl = math.exp(-sum(lp.token_logprobs[1:len(want) + 1]) / len(want))
    check(abs(got_ppl / ppl - 1) < 1e-3, f"perplexity: {got_ppl} vs onnxruntime's {ppl}")

    # Sampling with a seed is reproducible; another seed differs somewhere.
    def sampled(seed):
        return client.completions.create(
            model=model, prompt=prompts["story"]["text"], max_tokens=n, temperature=1.0,
            top_p=0.9, seed=seed, extra_body={"ignore_eos": True},
        ).choices[0].text

    a, b, c = sampled(7), sampled(7), sampled(8)
    check(a == b, f"seeded: {a!r} != {b!r}")
    check(a != c, f"seeds differ: {a!r} == {c!r}")

    # A stop string ends the text before it.
    full = prompts["story"]["completion"]
    stop = full[10:14]
    out = client.completions.create(model=model, prompt=prompts["story"]["text"], max_tokens=n, temperature=0, stop=[stop])
    check(out.choices[0].text == full[: full.index(stop)], f"stop string {stop!r}: {out.choices[0].text!r}")
    check(out.choices[0].finish_reason == "stop", f"stop finish: {out.choices[0].finish_reason}")

    # Eight concurrent streams, batched together in the page, each still onnxruntime's.
    def one(i):
        p = prompts[("story", "browser")[i % 2]]
        text, finish, _, _ = stream_text(client, model=model, prompt=p["text"], max_tokens=n, temperature=0)
        return text == p["completion"], text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    check(all(ok for ok, _ in results), f"concurrent: {[t for ok, t in results if not ok]}")

    # Bad requests are refused with the reason, as OpenAI's errors.
    errors = [
        ("too long", dict(model=model, prompt="word " * 400, max_tokens=4), openai.BadRequestError, "context length"),
        ("max_tokens 0", dict(model=model, prompt="hi", max_tokens=0), openai.BadRequestError, "max_tokens"),
        ("unknown model", dict(model="nope", prompt="hi", max_tokens=4), openai.NotFoundError, "nope"),
        ("temperature", dict(model=model, prompt="hi", max_tokens=4, temperature=-1), openai.BadRequestError, "temperature"),
    ]
    for what, kwargs, kind, needle in errors:
        try:
            client.completions.create(**kwargs)
            fail(f"{what}: answered")
        except kind as e:
            message = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
            check(needle in message, f"error {what}: {message!r}")
    print("all checks passed")


if __name__ == "__main__":
    main()
