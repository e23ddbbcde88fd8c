"""The by-hand trial's client (README.md here): the stock openai client against an agent
serving the converted model as `smol`, checked against onnxruntime's greedy loop
(node-agent/tests/fixtures/decoder_reference.py) on the same ids.

usage: python try_agent.py AGENT_URL [MODEL]   (R below: where the converted files are)
"""
import json, math, os, subprocess, sys, time
import openai
from tokenizers import Tokenizer
R = os.environ.get("R", "/var/tmp/realmodel/smollm2")
tok = Tokenizer.from_file(f"{R}/onnx_fp32/tokenizer.json")
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
print("models:", [m.id for m in c.models.list().data])
t0 = time.time()
out = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=40, temperature=0)
print("chat:", repr(out.choices[0].message.content), out.choices[0].finish_reason, out.usage, f"{time.time()-t0:.2f}s")
prompt = "Once upon a time, there was a"
ids = tok.encode(prompt, add_special_tokens=False).ids
N = 48
t0 = time.time()
out = c.completions.create(model="smol", prompt=ids, max_tokens=N, temperature=0, extra_body={"ignore_eos": True})
dt = time.time() - t0
got = out.choices[0].text
job = {"model": f"{R}/onnx_fp32/model.onnx", "prompts": [ids], "max_new_tokens": N}
ref = json.loads(subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "../../node-agent/tests/fixtures/decoder_reference.py")], input=json.dumps(job), capture_output=True, text=True, check=True).stdout)[0]
want = tok.decode(ref["tokens"], skip_special_tokens=True)
print("completion:", repr(got), f"{N} tokens in {dt:.2f}s = {N/dt:.1f} tok/s")
print("onnxruntime:", repr(want))
print("EQUAL" if got == want else "DIFFERENT")
# streamed
chunks = []
t0 = time.time(); first = None
for ch in c.completions.create(model="smol", prompt=ids, max_tokens=N, temperature=0, stream=True, extra_body={"ignore_eos": True}):
    if ch.choices and ch.choices[0].text:
        first = first or time.time() - t0
        chunks.append(ch.choices[0].text)
print("stream equal:", "".join(chunks) == want, f"ttft {first*1e3:.0f} ms, {len(chunks)} chunks")
# perplexity of a fixed text, fp32 cache, echo
text = open(os.path.join(os.path.dirname(__file__), "../../bench/src/bin/agent/generate/perplexity.rs")).read().split('const TEXT: &str = "')[1].split('";')[0].replace("\\\n", "")
out = c.completions.create(model=sys.argv[2] if len(sys.argv) > 2 else "smol", prompt=text, max_tokens=1, temperature=0, echo=True, logprobs=0)
lps = out.choices[0].logprobs.token_logprobs[1:-1]
print("perplexity:", len(lps), "tokens", math.exp(-sum(lps)/len(lps)))
