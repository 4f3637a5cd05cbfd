"""Dynamic-quantized models (qrt's quantize_dynamic): qrt int8 / onnxruntime int8 and qrt int8 / qrt float.

Models: a BERT-base-shaped encoder block (d_model 768, 12 heads, d_ff 3072) at batch 1, sequence 128
and 8; all-MiniLM-L6-v2 (when its wheel is cached or downloadable) on one sentence and on a
paragraph (up to 128 tokens); a bidirectional LSTM (hidden 128, 100 steps); ddddocr's common_old.onnx
CRNN (when the real-model cache has it).

    python benchmarks/bench_dynamic.py [model names...]
    python benchmarks/bench_dynamic.py --per-row [model names...]

``--per-row`` quantizes with ``per_row=True`` (per-token activation scales, the pattern of standard
ops) and compares qrt with that pattern fused (qrt::PerRowDynamicQuantizeMatMul), qrt running it
node by node (the per-row fusion pass switched off, every other pass as usual) and onnxruntime.

Environment: THREADS (default 2), RUNS (default 20), CPU=1 times the calling thread's CPU time (use
with THREADS=1 on a shared machine: preemption does not count), BLOCKS=1 times warm blocks of runs
per session (3 rounds, best block median) instead of interleaving the four sessions run by run,
PROFILE=1 adds qrt's per-op profile (median per node). Run with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
unset, as users do.
"""
import sys, os, time, json, collections
ROOT = os.environ.get("ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT + "/benchmarks"); sys.path.insert(0, ROOT + "/tests"); sys.path.insert(0, ROOT + "/tests/quantization")
import numpy as np, onnx
import qrt, bench_float as bf
from qrt.quantization import quantize_dynamic
from model_builders import transformer_block, lstm_model

THREADS = int(os.environ.get("THREADS", "2"))
RUNS = int(os.environ.get("RUNS", "20"))
PROFILE = os.environ.get("PROFILE")
# CPU=1: calling thread CPU time (robust to preemption on a shared machine; meaningful with THREADS=1)
CLOCK = time.thread_time if os.environ.get("CPU") else time.perf_counter

def models():
    rng = np.random.default_rng(0)
    bert = transformer_block(d_model=768, heads=12, d_ff=3072)
    yield "bert_block_s128", bert, {"x": rng.standard_normal((1, 128, 768)).astype(np.float32)}
    yield "bert_block_s8", bert, {"x": rng.standard_normal((1, 8, 768)).astype(np.float32)}
    try:
        import minilm
        from nbits_models import bert_encoder
        fetched = minilm.fetch()
        if fetched:
            weights, vocab = fetched
            m = bert_encoder(layers=6, hidden=384, heads=12, ffn=1536, weights=weights)
            ids = minilm.tokenize(minilm.SENTENCES[0], vocab)
            yield f"minilm_s{ids.shape[-1]}", m, {"input_ids": ids}
            # A paragraph-length input: the sentences run together, cut at 128 tokens.
            ids = minilm.tokenize(" ".join(minilm.SENTENCES), vocab)[:, :128]
            yield f"minilm_s{ids.shape[-1]}", m, {"input_ids": ids}
    except Exception as e:
        print("minilm unavailable", e)
    lm = lstm_model(input_size=64, hidden=128, direction="bidirectional")
    yield "lstm_b1_s100_h128", lm, {"x": rng.standard_normal((100, 1, 64)).astype(np.float32),
                                    "seq_lens": np.array([100], np.int32)}
    p = os.path.expanduser("~/.cache/qrt/test-models/ddddocr-1.6.1/ddddocr/common_old.onnx")
    if os.path.exists(p):
        m = onnx.load(p)
        yield "ddddocr_old_lstm", m, {m.graph.input[0].name: rng.random((1, 1, 64, 160)).astype(np.float32)}

def med(run, runs=RUNS):
    run(); run()
    ts = []
    for _ in range(runs):
        t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
    return float(np.median(ts))

def per_row_report(name, model, feeds):
    import qrt.fusion
    q = quantize_dynamic(model, None, per_row=True).model.SerializeToString()
    fused = bf.qrt_session(q, THREADS)
    keep, qrt.fusion.fuse_per_row_matmuls = qrt.fusion.fuse_per_row_matmuls, lambda m: m
    try:
        unfused = bf.qrt_session(q, THREADS)
    finally:
        qrt.fusion.fuse_per_row_matmuls = keep
    ours, plain = fused.run(None, feeds)[0], unfused.run(None, feeds)[0]
    sess = (("fused", fused), ("unfused", unfused), ("ort", bf.ort_session(q, THREADS)))
    err = float(np.max(np.abs(ours - sess[2][1].run(None, feeds)[0])))
    best = {k: [] for k, _ in sess}
    for _ in range(3):              # warm blocks per session, best block median
        for k, s in sess:
            s.run(None, feeds); s.run(None, feeds)
            block = []
            for _ in range(RUNS):
                t0 = CLOCK(); s.run(None, feeds); block.append(CLOCK() - t0)
            best[k].append(float(np.median(block)))
    t = {k: min(v) for k, v in best.items()}
    print(f"{name:20s} per-row fused/ort {t['fused']/t['ort']:5.2f}  unfused/ort {t['unfused']/t['ort']:5.2f}  "
          f"fused/unfused {t['fused']/t['unfused']:5.2f}  (fused {t['fused']*1e3:.2f} ms, unfused "
          f"{t['unfused']*1e3:.2f} ms, ort {t['ort']*1e3:.2f} ms)  fused==unfused {np.array_equal(ours, plain)} "
          f"maxdiff vs ort {err:.2e}", flush=True)


want = [a for a in sys.argv[1:] if a != "--per-row"]
for name, model, feeds in models():
    if want and name not in want:
        continue
    if "--per-row" in sys.argv[1:]:
        per_row_report(name, model, feeds)
        continue
    q = quantize_dynamic(model, None).model
    qb, fb = q.SerializeToString(), model.SerializeToString()
    sq, so = bf.qrt_session(qb, THREADS), bf.ort_session(qb, THREADS)
    sf, sof = bf.qrt_session(fb, THREADS), bf.ort_session(fb, THREADS)
    a = sq.run(None, feeds)[0]; b = so.run(None, feeds)[0]
    err = float(np.max(np.abs(a - b)))
    sess = (("qq", sq), ("oq", so), ("qf", sf), ("of", sof))
    for _, s in sess:
        s.run(None, feeds); s.run(None, feeds)
    samples = {k: [] for k, _ in sess}
    if os.environ.get("BLOCKS"):   # warm blocks of runs per session, 3 rounds, best block median
        best = {k: [] for k, _ in sess}
        for _ in range(3):
            for k, s in sess:
                block = []
                for _ in range(RUNS):
                    t0 = CLOCK(); s.run(None, feeds); block.append(CLOCK() - t0)
                best[k].append(float(np.median(block)))
        samples = {k: [min(v)] for k, v in best.items()}
    else:
        for _ in range(RUNS):   # interleaved, so load from other processes hits all four alike
            for k, s in sess:
                t0 = CLOCK(); s.run(None, feeds); samples[k].append(CLOCK() - t0)
    t = {k: float(np.median(v)) for k, v in samples.items()}
    print(f"{name:20s} qrtQ/ortQ {t['qq']/t['oq']:5.2f}  qrtQ/qrtF {t['qq']/t['qf']:5.2f}  qrtF/ortF {t['qf']/t['of']:5.2f}"
          f"  ortQ/ortF {t['oq']/t['of']:5.2f}  (qrtQ {t['qq']*1e3:.2f} ms, ortQ {t['oq']*1e3:.2f} ms) maxdiff {err:.2e}", flush=True)
    if PROFILE:
        o = qrt.SessionOptions(); o.intra_op_num_threads = THREADS; o.enable_profiling = True
        s = qrt.InferenceSession(qb, o)
        R = 30
        for _ in range(R): s.run(None, feeds)
        ev = json.load(open(s.end_profiling()))
        nodes = [e for e in ev if e.get("cat") == "Node"]
        per = len(nodes) // R
        by_node = collections.defaultdict(list)
        for e in nodes[2 * per:]:
            by_node[(e.get("args", {}).get("op_name", e["name"]), e["name"])].append(e["dur"])
        tot = collections.Counter(); cnt = collections.Counter()
        for (op, _), durs in by_node.items():   # median per node: robust to preemption on a shared machine
            tot[op] += float(np.median(durs)); cnt[op] += 1
        T = sum(tot.values())
        for op, d in tot.most_common(12):
            print(f"    {op:28s} {d/1000:8.3f} ms {100*d/T:5.1f}%  n={cnt[op]}")
        print(f"    total {T/1000:.3f} ms (sum of per-node medians, {per} events/run)")
