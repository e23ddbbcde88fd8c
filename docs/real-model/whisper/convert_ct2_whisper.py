#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model (model.bin + tokenizer.json + config.json, as shipped
by faster-whisper style packages) into ONNX encoder/decoder files (opset 17, IR 8) written
with onnx.helper from numpy weights (no torch), in the layout webaccel transcribes with
(encoder_model.onnx: input_features -> present.{i}.encoder.key|value; model.onnx: the
decoder with past_key_values.{i}.decoder.* and .encoder.*), with tokenizer.json,
tokenizer_config.json, generation_config.json, preprocessor_config.json and config.json.
Kept as the record of the by-hand trial in ../README.md; not a supported tool, not run
in CI.

usage: convert.py CT2_MODEL_DIR OUT_DIR
"""
import json, os, shutil, struct, sys
import numpy as np
import onnx
from onnx import helper as h, TensorProto as TP, numpy_helper as nh

# ---------------------------------------------------------------- CT2 reader
_DT = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path):
    b = open(path, 'rb').read()
    o = 0

    def u(fmt):
        nonlocal o
        v = struct.unpack_from(fmt, b, o)
        o += struct.calcsize(fmt)
        return v

    def s():
        nonlocal o
        n, = u('<H')
        t = b[o:o + n - 1].decode()
        o += n
        return t

    ver, = u('<I')
    spec = s()
    rev, = u('<I')
    assert ver == 6 and spec == 'WhisperSpec', (ver, spec)
    nv, = u('<I')
    vs = {}
    for _ in range(nv):
        nm = s()
        r, = u('<B')
        dims = u('<%dI' % r) if r else ()
        dt, = u('<B')
        nb, = u('<I')
        dtype = _DT[dt]
        a = np.frombuffer(b, dtype, nb // np.dtype(dtype).itemsize, o).reshape(dims)
        o += nb
        vs[nm] = a
    na, = u('<I')
    for _ in range(na):
        k = s()
        v = s()
        vs[k] = vs[v]
    assert o == len(b), 'trailing bytes in model.bin'
    return vs


# ---------------------------------------------------------------- graph helpers
class G:
    def __init__(self, prefix):
        self.nodes, self.inits, self.n = [], [], 0
        self.prefix = prefix
        self._consts = {}

    def name(self, base):
        self.n += 1
        return f'{base}_{self.n}'

    def init(self, name, arr):
        self.inits.append(nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, arr):
        arr = np.asarray(arr)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name('const'), arr)
        return self._consts[key]

    def op(self, op_type, inputs, n_out=1, **attrs):
        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(h.make_node(op_type, inputs, outs, name=self.name(op_type + '_node'), **attrs))
        return outs[0] if n_out == 1 else outs

    def op_to(self, op_type, inputs, outputs, **attrs):
        self.nodes.append(h.make_node(op_type, inputs, outputs, name=self.name(op_type + '_node'), **attrs))
        return outputs[0]

    # building blocks
    def linear(self, x, w, b=None):
        """x[..., in] @ w.T + b with w [out, in] (CT2/PyTorch layout)."""
        wn = self.init(self.name('W'), np.ascontiguousarray(w.astype(np.float32).T))
        y = self.op('MatMul', [x, wn])
        if b is not None:
            y = self.op('Add', [y, self.init(self.name('b'), b.astype(np.float32))])
        return y

    def layernorm(self, x, gamma, beta):
        return self.op('LayerNormalization', [x, self.init(self.name('ln_g'), gamma.astype(np.float32)),
                                              self.init(self.name('ln_b'), beta.astype(np.float32))],
                       axis=-1, epsilon=1e-5)

    def gelu(self, x):  # exact erf GELU (Gelu op only exists from opset 20)
        t = self.op('Mul', [x, self.const(np.float32(1 / np.sqrt(2)))])
        t = self.op('Erf', [t])
        t = self.op('Add', [t, self.const(np.float32(1.0))])
        t = self.op('Mul', [x, t])
        return self.op('Mul', [t, self.const(np.float32(0.5))])

    def to_heads(self, x, H, Dh):  # [B,T,d] -> [B,H,T,Dh]
        r = self.op('Reshape', [x, self.const(np.array([0, 0, H, Dh], np.int64))])
        return self.op('Transpose', [r], perm=[0, 2, 1, 3])

    def to_heads_out(self, x, H, Dh, out_name):
        r = self.op('Reshape', [x, self.const(np.array([0, 0, H, Dh], np.int64))])
        return self.op_to('Transpose', [r], [out_name], perm=[0, 2, 1, 3])

    def from_heads(self, x, d):  # [B,H,T,Dh] -> [B,T,d]
        t = self.op('Transpose', [x], perm=[0, 2, 1, 3])
        return self.op('Reshape', [t, self.const(np.array([0, 0, d], np.int64))])

    def attend(self, q, k, v, Dh, mask_bool=None):
        kt = self.op('Transpose', [k], perm=[0, 1, 3, 2])
        s = self.op('MatMul', [q, kt])
        s = self.op('Mul', [s, self.const(np.float32(1.0 / np.sqrt(Dh)))])
        if mask_bool is not None:
            s = self.op('Where', [mask_bool, s, self.const(np.float32(np.finfo(np.float32).min))])
        p = self.op('Softmax', [s], axis=-1)
        return self.op('MatMul', [p, v])


def f32(a):
    return a.astype(np.float32)


def save(graph_nodes, g, inputs, outputs, name, path):
    graph = h.make_graph(graph_nodes, name, inputs, outputs, initializer=g.inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid('', 17)], producer_name='realwhisper-convert')
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


# ---------------------------------------------------------------- encoder
def build_encoder(W, cfg, path):
    d, H, Le, Ld = cfg['d_model'], cfg['encoder_attention_heads'], cfg['encoder_layers'], cfg['decoder_layers']
    Dh = d // H
    g = G('enc')
    x = g.op('Conv', ['input_features', g.init('conv1.w', f32(W['encoder/conv1/weight'])),
                      g.init('conv1.b', f32(W['encoder/conv1/bias']))], kernel_shape=[3], pads=[1, 1])
    x = g.gelu(x)
    x = g.op('Conv', [x, g.init('conv2.w', f32(W['encoder/conv2/weight'])),
                      g.init('conv2.b', f32(W['encoder/conv2/bias']))], kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.gelu(x)
    x = g.op('Transpose', [x], perm=[0, 2, 1])  # [B,1500,d]
    x = g.op('Add', [x, g.init('enc_pos', f32(W['encoder/position_encodings/encodings']))])
    for i in range(Le):
        p = f'encoder/layer_{i}/'
        hdn = g.layernorm(x, W[p + 'self_attention/layer_norm/gamma'], W[p + 'self_attention/layer_norm/beta'])
        wqkv, bqkv = W[p + 'self_attention/linear_0/weight'], W[p + 'self_attention/linear_0/bias']
        q = g.to_heads(g.linear(hdn, wqkv[:d], bqkv[:d]), H, Dh)
        k = g.to_heads(g.linear(hdn, wqkv[d:2 * d]), H, Dh)  # Whisper: no k bias
        v = g.to_heads(g.linear(hdn, wqkv[2 * d:], bqkv[2 * d:]), H, Dh)
        a = g.from_heads(g.attend(q, k, v, Dh), d)
        a = g.linear(a, W[p + 'self_attention/linear_1/weight'], W[p + 'self_attention/linear_1/bias'])
        x = g.op('Add', [x, a])
        hdn = g.layernorm(x, W[p + 'ffn/layer_norm/gamma'], W[p + 'ffn/layer_norm/beta'])
        hdn = g.gelu(g.linear(hdn, W[p + 'ffn/linear_0/weight'], W[p + 'ffn/linear_0/bias']))
        hdn = g.linear(hdn, W[p + 'ffn/linear_1/weight'], W[p + 'ffn/linear_1/bias'])
        x = g.op('Add', [x, hdn])
    g.op_to('LayerNormalization', [x, g.init('enc_ln_g', f32(W['encoder/layer_norm/gamma'])),
                                   g.init('enc_ln_b', f32(W['encoder/layer_norm/beta']))],
            ['last_hidden_state'], axis=-1, epsilon=1e-5)
    outputs = [h.make_tensor_value_info('last_hidden_state', TP.FLOAT, ['batch_size', 1500, d])]
    for i in range(Ld):
        p = f'decoder/layer_{i}/attention/'
        wkv, bkv = W[p + 'linear_1/weight'], W[p + 'linear_1/bias']
        assert not np.any(bkv[:d]), 'unexpected cross-attn k bias'
        g.to_heads_out(g.linear('last_hidden_state', wkv[:d]), H, Dh, f'present.{i}.encoder.key')
        g.to_heads_out(g.linear('last_hidden_state', wkv[d:], bkv[d:]), H, Dh, f'present.{i}.encoder.value')
        for kv in ('key', 'value'):
            outputs.append(h.make_tensor_value_info(f'present.{i}.encoder.{kv}', TP.FLOAT,
                                                    ['batch_size', H, 1500, Dh]))
    inputs = [h.make_tensor_value_info('input_features', TP.FLOAT, ['batch_size', 80, 3000])]
    save(g.nodes, g, inputs, outputs, 'whisper_encoder', path)


# ---------------------------------------------------------------- decoder
def build_decoder(W, cfg, path):
    d, H, Ld, V = cfg['d_model'], cfg['decoder_attention_heads'], cfg['decoder_layers'], cfg['vocab_size']
    Dh = d // H
    g = G('dec')
    emb = g.init('embed_tokens', f32(W['decoder/embeddings/weight']))
    pos = g.init('embed_positions', f32(W['decoder/position_encodings/encodings']))
    x = g.op('Add', [g.op('Gather', [emb, 'input_ids'], axis=0), g.op('Gather', [pos, 'position_ids'], axis=0)])

    # visibility mask [B,1,S,T]: key j visible to query q iff attention_mask[b,j]==1 and j <= past+q
    zero, one = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))
    past_len = g.op('Squeeze', [g.op('Slice', [g.op('Shape', ['past_key_values.0.decoder.key']),
                                                g.const(np.array([2], np.int64)), g.const(np.array([3], np.int64))]),
                                g.const(np.array([0], np.int64))])
    seq_len = g.op('Squeeze', [g.op('Slice', [g.op('Shape', ['input_ids']), g.const(np.array([1], np.int64)),
                                              g.const(np.array([2], np.int64))]), g.const(np.array([0], np.int64))])
    tot_len = g.op('Squeeze', [g.op('Slice', [g.op('Shape', ['attention_mask']), g.const(np.array([1], np.int64)),
                                              g.const(np.array([2], np.int64))]), g.const(np.array([0], np.int64))])
    qpos = g.op('Add', [g.op('Range', [zero, seq_len, one]), past_len])            # [S]
    kpos = g.op('Range', [zero, tot_len, one])                                       # [T]
    causal = g.op('LessOrEqual', [g.op('Unsqueeze', [kpos, g.const(np.array([0], np.int64))]),
                                  g.op('Unsqueeze', [qpos, g.const(np.array([1], np.int64))])])  # [S,T]
    keymask = g.op('Equal', ['attention_mask', one])                                 # [B,T]
    keymask = g.op('Unsqueeze', [keymask, g.const(np.array([1, 2], np.int64))])    # [B,1,1,T]
    vis = g.op('And', [keymask, causal])                                             # [B,1,S,T]

    outputs = [h.make_tensor_value_info('logits', TP.FLOAT, ['batch_size', 'sequence_length', V])]
    inputs = [h.make_tensor_value_info('input_ids', TP.INT64, ['batch_size', 'sequence_length']),
              h.make_tensor_value_info('attention_mask', TP.INT64, ['batch_size', 'total_sequence_length']),
              h.make_tensor_value_info('position_ids', TP.INT64, ['batch_size', 'sequence_length'])]
    for i in range(Ld):
        for kv in ('key', 'value'):
            inputs.append(h.make_tensor_value_info(f'past_key_values.{i}.decoder.{kv}', TP.FLOAT,
                                                   ['batch_size', H, 'past_sequence_length', Dh]))
        for kv in ('key', 'value'):
            inputs.append(h.make_tensor_value_info(f'past_key_values.{i}.encoder.{kv}', TP.FLOAT,
                                                   ['batch_size', H, 1500, Dh]))
        for kv in ('key', 'value'):
            outputs.append(h.make_tensor_value_info(f'present.{i}.decoder.{kv}', TP.FLOAT,
                                                    ['batch_size', H, 'total_sequence_length', Dh]))

    for i in range(Ld):
        p = f'decoder/layer_{i}/'
        # self attention
        hdn = g.layernorm(x, W[p + 'self_attention/layer_norm/gamma'], W[p + 'self_attention/layer_norm/beta'])
        wqkv, bqkv = W[p + 'self_attention/linear_0/weight'], W[p + 'self_attention/linear_0/bias']
        assert not np.any(bqkv[d:2 * d])
        q = g.to_heads(g.linear(hdn, wqkv[:d], bqkv[:d]), H, Dh)
        k = g.to_heads(g.linear(hdn, wqkv[d:2 * d]), H, Dh)
        v = g.to_heads(g.linear(hdn, wqkv[2 * d:], bqkv[2 * d:]), H, Dh)
        k = g.op_to('Concat', [f'past_key_values.{i}.decoder.key', k], [f'present.{i}.decoder.key'], axis=2)
        v = g.op_to('Concat', [f'past_key_values.{i}.decoder.value', v], [f'present.{i}.decoder.value'], axis=2)
        a = g.from_heads(g.attend(q, k, v, Dh, vis), d)
        a = g.linear(a, W[p + 'self_attention/linear_1/weight'], W[p + 'self_attention/linear_1/bias'])
        x = g.op('Add', [x, a])
        # cross attention (keys/values precomputed by the encoder)
        hdn = g.layernorm(x, W[p + 'attention/layer_norm/gamma'], W[p + 'attention/layer_norm/beta'])
        q = g.to_heads(g.linear(hdn, W[p + 'attention/linear_0/weight'], W[p + 'attention/linear_0/bias']), H, Dh)
        a = g.from_heads(g.attend(q, f'past_key_values.{i}.encoder.key', f'past_key_values.{i}.encoder.value', Dh), d)
        a = g.linear(a, W[p + 'attention/linear_2/weight'], W[p + 'attention/linear_2/bias'])
        x = g.op('Add', [x, a])
        # MLP
        hdn = g.layernorm(x, W[p + 'ffn/layer_norm/gamma'], W[p + 'ffn/layer_norm/beta'])
        hdn = g.gelu(g.linear(hdn, W[p + 'ffn/linear_0/weight'], W[p + 'ffn/linear_0/bias']))
        hdn = g.linear(hdn, W[p + 'ffn/linear_1/weight'], W[p + 'ffn/linear_1/bias'])
        x = g.op('Add', [x, hdn])
    x = g.layernorm(x, W['decoder/layer_norm/gamma'], W['decoder/layer_norm/beta'])
    # logits = x @ E^T, sharing the embedding initializer via Gemm(transB=1)
    x2 = g.op('Reshape', [x, g.const(np.array([-1, d], np.int64))])
    lg = g.op('Gemm', [x2, emb], transB=1)
    out_shape = g.op('Concat', [g.op('Shape', ['input_ids']), g.const(np.array([V], np.int64))], axis=0)
    g.op_to('Reshape', [lg, out_shape], ['logits'])
    save(g.nodes, g, inputs, outputs, 'whisper_decoder', path)


# ---------------------------------------------------------------- configs
def write_configs(src, out, cfg, tok):
    ct2cfg = json.load(open(os.path.join(src, 'config.json')))
    shutil.copy(os.path.join(src, 'tokenizer.json'), os.path.join(out, 'tokenizer.json'))
    added = {a['content']: a['id'] for a in tok['added_tokens']}
    for a in tok['added_tokens']:
        assert a['special'], a
    eot, sot = added['<|endoftext|>'], added['<|startoftranscript|>']
    translate, transcribe = added['<|translate|>'], added['<|transcribe|>']
    nots = added['<|notimestamps|>']
    lang_to_id = {c: i for c, i in sorted(added.items(), key=lambda kv: kv[1]) if sot < i < translate}
    multilingual = cfg['vocab_size'] >= 51865
    json.dump({
        'eos_token': '<|endoftext|>', 'bos_token': '<|endoftext|>', 'unk_token': '<|endoftext|>',
        'pad_token': '<|endoftext|>', 'model_max_length': 1024, 'add_prefix_space': False,
        'errors': 'replace', 'tokenizer_class': 'WhisperTokenizer', 'clean_up_tokenization_spaces': True,
    }, open(os.path.join(out, 'tokenizer_config.json'), 'w'), indent=2)
    json.dump({
        'decoder_start_token_id': sot, 'bos_token_id': eot, 'eos_token_id': eot, 'pad_token_id': eot,
        'lang_to_id': lang_to_id, 'task_to_id': {'transcribe': transcribe, 'translate': translate},
        'no_timestamps_token_id': nots, 'is_multilingual': multilingual, 'max_length': 448,
        'max_initial_timestamp_index': 50,
        'forced_decoder_ids': ([[1, None], [2, transcribe]] if multilingual else [[1, nots]]),
        'suppress_tokens': ct2cfg.get('suppress_ids', []),
        'begin_suppress_tokens': ct2cfg.get('suppress_ids_begin', []),
        'alignment_heads': ct2cfg.get('alignment_heads', []),
    }, open(os.path.join(out, 'generation_config.json'), 'w'), indent=2)
    json.dump({
        'feature_extractor_type': 'WhisperFeatureExtractor', 'processor_class': 'WhisperProcessor',
        'feature_size': 80, 'sampling_rate': 16000, 'hop_length': 160, 'n_fft': 400, 'chunk_length': 30,
        'n_samples': 480000, 'nb_max_frames': 3000, 'padding_side': 'right', 'padding_value': 0.0,
        'return_attention_mask': False,
    }, open(os.path.join(out, 'preprocessor_config.json'), 'w'), indent=2)
    json.dump({
        'model_type': 'whisper', 'architectures': ['WhisperForConditionalGeneration'],
        'd_model': cfg['d_model'], 'encoder_layers': cfg['encoder_layers'], 'decoder_layers': cfg['decoder_layers'],
        'encoder_attention_heads': cfg['encoder_attention_heads'],
        'decoder_attention_heads': cfg['decoder_attention_heads'],
        'encoder_ffn_dim': cfg['ffn_dim'], 'decoder_ffn_dim': cfg['ffn_dim'],
        'vocab_size': cfg['vocab_size'], 'num_mel_bins': 80, 'max_source_positions': 1500,
        'max_target_positions': 448, 'activation_function': 'gelu', 'scale_embedding': False,
        'decoder_start_token_id': sot, 'bos_token_id': eot, 'eos_token_id': eot, 'pad_token_id': eot,
        'begin_suppress_tokens': ct2cfg.get('suppress_ids_begin', []),
        'suppress_tokens': ct2cfg.get('suppress_ids', []),
        'is_encoder_decoder': True, 'use_cache': True, 'torch_dtype': 'float32',
    }, open(os.path.join(out, 'config.json'), 'w'), indent=2)


def main(src, out):
    os.makedirs(out, exist_ok=True)
    W = read_ct2(os.path.join(src, 'model.bin'))
    V, d = W['decoder/embeddings/weight'].shape
    cfg = dict(d_model=d, vocab_size=V,
               encoder_layers=sum(1 for k in W if k.startswith('encoder/layer_') and k.endswith('ffn/linear_0/weight')),
               decoder_layers=sum(1 for k in W if k.startswith('decoder/layer_') and k.endswith('ffn/linear_0/weight')),
               encoder_attention_heads=int(W['encoder/num_heads']), decoder_attention_heads=int(W['decoder/num_heads']),
               ffn_dim=W['encoder/layer_0/ffn/linear_0/weight'].shape[0])
    assert int(W['decoder/activation']) == 3 and int(W['decoder/pre_norm']) == 1  # GELU, pre-LN
    assert int(W['decoder/scale_embeddings']) == 0 and int(W['decoder/alibi']) == 0
    print('config', cfg)
    tok = json.load(open(os.path.join(src, 'tokenizer.json')))
    build_encoder(W, cfg, os.path.join(out, 'encoder_model.onnx'))
    build_decoder(W, cfg, os.path.join(out, 'model.onnx'))
    write_configs(src, out, cfg, tok)
    for f in sorted(os.listdir(out)):
        print(f, os.path.getsize(os.path.join(out, f)))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
