#!/usr/bin/env python3
"""Drives an OpenAI-compatible transcription endpoint (a webaccel agent or gateway)
with the stock `openai` client from PyPI, at its default settings, and checks what it
transcribes against onnxruntime's greedy transcriptions of the same Whisper-style
fixture (fixtures/models/whisper/reference.json, written by make_whisper.py; never
against webaccel itself).

Usage: openai_transcribe.py URL MODELS_DIR [--token T] [--model NAME]

The endpoint must serve the fixture (models/whisper) as NAME with its tokenizer and a
context of 20 positions (the 4-token prompt and the reference's 16 tokens). Exits
non-zero with the reason on the first mismatch; prints one line per check.
"""

import argparse
import concurrent.futures
import io
import json
import os
import sys
import wave

import openai

# Beside this script; no __pycache__ left in the source tree.
sys.dont_write_bytecode = True
from checks import check, fail  # noqa: E402


def wav_bytes(rate, samples):
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(int(s).to_bytes(2, "little", signed=True) for s in samples))
    return out.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("models")
    ap.add_argument("--token", default="none")
    ap.add_argument("--model", default="whisper")
    args = ap.parse_args()
    folder = os.path.join(args.models, "whisper")
    with open(os.path.join(folder, "reference.json")) as f:
        ref = json.load(f)
    client = openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.token)
    model = args.model

    listed = [m.id for m in client.models.list().data]
    check(model in listed, f"models: {model} in {listed}")

    # Each sound gives onnxruntime's transcription, as JSON and as plain text.
    for sound in ref["sounds"]:
        path = os.path.join(folder, sound["wav"])
        with open(path, "rb") as f:
            out = client.audio.transcriptions.create(model=model, file=f)
        check(out.text == sound["text"], f"transcription {sound['name']}: {out.text!r} != {sound['text']!r}")
        with open(path, "rb") as f:
            text = client.audio.transcriptions.create(model=model, file=f, response_format="text", language="en")
        check(text == sound["text"], f"text format {sound['name']}: {text!r}")

    # Four at once, batched in the page, each still its own.
    def one(i):
        sound = ref["sounds"][i % 2]
        with open(os.path.join(folder, sound["wav"]), "rb") as f:
            return client.audio.transcriptions.create(model=model, file=f).text == sound["text"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        check(all(pool.map(one, range(4))), "concurrent: each gets its own")

    # What cannot be transcribed is refused with the reason.
    with open(os.path.join(folder, ref["sounds"][0]["wav"]), "rb") as f:
        tone = f.read()
    errors = [
        ("not wav", dict(model=model, file=("a.mp3", b"ID3\x04\x00 an mp3, not a wav")), "not a WAV file"),
        ("sample rate", dict(model=model, file=("a.wav", wav_bytes(8000, [0, 1000, -1000] * 100))), "16000 Hz"),
        ("language", dict(model=model, file=("a.wav", tone), language="xx"), "language 'xx'"),
        ("format", dict(model=model, file=("a.wav", tone), response_format="srt"), "response_format"),
    ]
    for what, kwargs, needle in errors:
        try:
            client.audio.transcriptions.create(**kwargs)
            fail(f"{what}: answered")
        except openai.BadRequestError as e:
            message = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
            check(needle in message, f"error {what}: {message!r}")
    # A speech model takes no text prompt.
    try:
        client.completions.create(model=model, prompt="hello", max_tokens=2)
        fail("text to a speech model: answered")
    except openai.BadRequestError as e:
        message = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
        check("transcribes audio" in message, f"error text prompt: {message!r}")
    print("all checks passed")


if __name__ == "__main__":
    main()
