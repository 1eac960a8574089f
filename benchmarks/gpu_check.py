"""GPU correctness checks (bf16 on CUDA) run before the benchmarks: kernels vs references, and
fast_generate (CUDA graph) vs HF generate on a tiny model. Prints one line per check.
    python3 benchmarks/gpu_check.py [name substrings: only those checks]"""
import time
import traceback

import torch

import linearize
import linearize.kernels  # noqa: F401
from linearize.attention import gated_slots, gla, hybrid
from linearize.kernels import chunk, decode

dev = "cuda"
results = {}


def ms(fn):
    """Median time of fn() in ms (triton.testing.do_bench: warm-up, L2 cleared between runs)."""
    import triton.testing

    return round(triton.testing.do_bench(fn, return_mode="median"), 3)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-9)).item()


def check(name, fn):
    t = time.time()
    try:
        r = fn()
        print(f"CHECK {name}: {r} ({time.time() - t:.1f}s)", flush=True)
        results[name] = r
    except Exception:
        print(f"CHECK {name}: FAILED", flush=True)
        traceback.print_exc()
        results[name] = "FAILED"


def chunk_gla_bf16(V=129):
    """gla_chunked_triton: the stored-state kernels (chunk.py) at V = 129 and 65, the fused walk
    (fused_chunk.py) at V = 64."""
    torch.manual_seed(0)
    B, H, T, K = 2, 4, 1000, 128
    q, k, v = (torch.randn(B, H, T, d, device=dev, dtype=torch.bfloat16) for d in (K, K, V))
    gk = -torch.sigmoid(torch.randn(B, H, T, K, device=dev))
    leaves = [q, k, v, gk]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn(B, H, T, V, device=dev, dtype=torch.bfloat16)
    lf = [x.detach().float().requires_grad_(True) for x in leaves]
    o_ref, S_ref = gla.gla_chunked(*lf, chunk_size=64)
    gr = torch.autograd.grad((o_ref * do.float()).sum(), lf)
    o, S = chunk.gla_chunked_triton(q, k, v, gk, chunk_size=64)
    g = torch.autograd.grad((o.float() * do.float()).sum(), leaves)
    return {"o": rel(o, o_ref), "S": rel(S, S_ref), **{n: rel(a, b) for n, a, b in zip("dq dk dv dg".split(), g, gr)}}


def hybrid_chunk_and_steps():
    torch.manual_seed(1)
    B, H, T, D, F, W = 2, 4, 300, 128, 128, 64
    bf = dict(device=dev, dtype=torch.bfloat16)
    a = dict(q=torch.randn(B, H, T, D, **bf), k=torch.randn(B, H, T, D, **bf), v=torch.randn(B, H, T, D, **bf),
             fq=torch.softmax(torch.randn(B, H, T, F, **bf), -1), fk=torch.softmax(torch.randn(B, H, T, F, **bf), -1),
             g=-torch.sigmoid(torch.randn(B, H, T, F, device=dev)), mix=torch.randn(H, **bf), scale=D ** -0.5,
             meta_k=torch.randn(H, 4, D, **bf), meta_v=torch.randn(H, 4, D, **bf))
    a32 = {n: (x.float() if torch.is_tensor(x) else x) for n, x in a.items()}
    o_ref, st_ref = hybrid.hybrid_chunked(window=W, return_state=True, **a32)
    o, st = chunk.hybrid_chunked_triton(window=W, return_state=True, **a)
    out = {"chunk_o": rel(o, o_ref), "chunk_S": rel(st["S"], st_ref["S"])}
    errs = []
    for t in range(3):
        x = {n: (torch.randn_like(v[:, :, 0]) if torch.is_tensor(v) and v.dim() == 4 else v) for n, v in a.items()}
        x["g"] = -torch.sigmoid(x["g"])
        x["fq"], x["fk"] = torch.softmax(x["fq"].float(), -1).bfloat16(), torch.softmax(x["fk"].float(), -1).bfloat16()
        r = hybrid.hybrid_step(st_ref, **{n: (v.float() if torch.is_tensor(v) else v) for n, v in x.items()})
        errs.append(rel(decode.hybrid_step_triton(st, **x), r))
    out["step_o"] = max(errs)
    out["step_S"] = rel(st["S"], st_ref["S"])
    return out


def hybrid_chunk_grads_bf16():
    """The whole Triton/compiled hybrid (window kernel, GLA kernels, fused glue) in bf16, forward and
    backward, against the plain fp32 PyTorch reference (kernels and compile off), left padding on row 0."""
    import os

    torch.manual_seed(3)
    B, H, T, D, F, W = 2, 9, 1000, 64, 128, 64
    bf = dict(device=dev, dtype=torch.bfloat16)
    valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    valid[0, :37] = False
    keep = valid[:, None, :, None]
    a = dict(q=torch.randn(B, H, T, D, **bf), k=torch.randn(B, H, T, D, **bf), v=torch.randn(B, H, T, D, **bf) * keep,
             fq=torch.softmax(torch.randn(B, H, T, F, **bf), -1), fk=torch.softmax(torch.randn(B, H, T, F, **bf), -1) * keep,
             # mild gates: at -0.5 a step (the old setting) the lagged keys decayed by e^-32 over the window,
             # the linear half vanished, and dmix / dg compared rounding noise with ~0 (read as rel 1.0)
             g=-0.02 * torch.sigmoid(torch.randn(B, H, T, F, device=dev)) * keep, mix=torch.randn(H, **bf),
             meta_k=torch.randn(H, 4, D, **bf), meta_v=torch.randn(H, 4, D, **bf))
    names = [n for n in a]
    for x in a.values():
        x.requires_grad_(True)
    do = torch.randn(B, H, T, D, **bf)
    o = chunk.hybrid_chunked_triton(window=W, scale=D ** -0.5, valid=valid, **a)
    g = torch.autograd.grad((o.float() * do.float()).sum(), list(a.values()))
    a32 = {n: x.detach().float().requires_grad_(True) for n, x in a.items()}
    os.environ["LINEARIZE_COMPILE"] = "0"
    try:
        o_ref = hybrid.hybrid_chunked(window=W, scale=D ** -0.5, valid=valid, **a32)
        gr = torch.autograd.grad((o_ref * do.float()).sum(), list(a32.values()))
    finally:
        del os.environ["LINEARIZE_COMPILE"]
    return {"o": rel(o, o_ref), **{"d" + n: rel(x, y) for n, x, y in zip(names, g, gr)}}


def feature_map_compiled():
    """hedgehog_features compiled (bf16) vs its plain fp32 form, values and gradients."""
    from linearize.attention.feature_maps import hedgehog_features

    torch.manual_seed(4)
    x = torch.randn(16, 9, 512, 64, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.eye(64, device=dev) + 0.1 * torch.randn(9, 64, 64, device=dev)).bfloat16().requires_grad_(True)
    b = (0.1 * torch.randn(9, 64, device=dev)).bfloat16().requires_grad_(True)
    y = hedgehog_features(x, w, b)
    dy = torch.randn_like(y)
    g = torch.autograd.grad((y.float() * dy.float()).sum(), [x, w, b])
    l32 = [t.detach().float().requires_grad_(True) for t in (x, w, b)]
    y_ref = hedgehog_features.reference(*l32)
    gr = torch.autograd.grad((y_ref * dy.float()).sum(), l32)
    return {"y": rel(y, y_ref), **{n: rel(p, r) for n, p, r in zip(("dx", "dw", "db"), g, gr)}}


def feature_map_kernel():
    """kernels/feature_map.py (bf16, no autograd) vs hedgehog_features' plain fp32 form, at a
    prefill shape (strided heads-first view, as the projections leave it) and a decode step; plus
    its time beside the compiled reference at the prefill shape."""
    from linearize.attention.feature_maps import hedgehog_features
    from linearize.kernels.feature_map import hedgehog_features_triton

    torch.manual_seed(5)
    w = (torch.eye(64, device=dev) + 0.1 * torch.randn(9, 64, 64, device=dev)).bfloat16()
    b = (0.1 * torch.randn(9, 64, device=dev)).bfloat16()
    out = {}
    for name, x in (("prefill", torch.randn(16, 4096, 9, 64, device=dev, dtype=torch.bfloat16).transpose(1, 2)),
                    ("step", torch.randn(16, 9, 1, 64, device=dev, dtype=torch.bfloat16))):
        with torch.no_grad():
            y = hedgehog_features_triton(x, w, b)
            y_ref = hedgehog_features.reference(x.float(), w.float(), b.float())
        out[name] = rel(y, y_ref)
    x = torch.randn(16, 9, 4096, 64, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        for label, fn in (("ms_kernel", hedgehog_features_triton), ("ms_compiled_ref", hedgehog_features)):
            out[label] = ms(lambda: fn(x, w, b))
    return out


def gsa_chunk_and_steps():
    torch.manual_seed(2)
    B, H, T, D, m = 2, 4, 300, 128, 64
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    g = -torch.sigmoid(torch.randn(B, H, T, m, device=dev))
    o_ref, st_ref = gated_slots.gsa_chunked(q.float(), k.float(), v.float(), g, D ** -0.5)
    o, st = chunk.gsa_chunked_triton(q, k, v, g, D ** -0.5)
    out = {"chunk_o": rel(o, o_ref), "Sk": rel(st["Sk"], st_ref["Sk"]), "Sv": rel(st["Sv"], st_ref["Sv"])}
    errs = []
    for t in range(3):
        x = [torch.randn(B, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3)]
        gg = -torch.sigmoid(torch.randn(B, H, m, device=dev))
        r = gated_slots.gsa_step(st_ref, *[y.float() for y in x], gg, D ** -0.5)
        errs.append(rel(decode.gsa_step_triton(st, *x, gg, D ** -0.5), r))
    out["step_o"] = max(errs)
    return out


def tiny_llama():
    """A 2-layer random Llama (fp32, CPU; vocab 101, 4 heads / 2 kv heads) for the end-to-end checks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512))


def graphed_training_equals_eager():
    """Three optimizer steps of two accumulated micro-batches each, eager vs replayed from a CUDA graph
    (linearize.cuda_graph_step), for the stage-1 loss and an LM loss: same losses, same parameters."""
    import copy

    from linearize import LinearizeConfig, convert
    from linearize.attention_transfer import freeze_all_but_new, linear_attentions, make_transfer_loss
    from linearize.cuda_graph_step import GraphedStep
    from linearize.surgery import set_mode

    torch.manual_seed(0)
    base = convert(tiny_llama(), LinearizeConfig(method="lizard", window=16, feature_dim=32, chunk_size=32)).to(dev)
    freeze_all_but_new(base)
    out = {}
    for mode in ("transfer", "student"):
        models = [copy.deepcopy(base) for _ in range(2)]
        losses = []
        for which, m in enumerate(models):
            set_mode(m, mode)
            tl = make_transfer_loss(linear_attentions(m))
            fn = (lambda mod, b, tl=tl: tl(mod, b)) if mode == "transfer" else \
                (lambda mod, b: (mod(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["input_ids"],
                                     use_cache=False).loss, {}))
            params = [p for p in m.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=0.1)
            gs = GraphedStep(fn, m, grad_scale=0.5) if which else None
            gen = torch.Generator().manual_seed(1)
            ls = []
            for step in range(3):
                for micro in range(2):
                    ids = torch.randint(0, 101, (2, 70), generator=gen).to(dev)
                    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                    if gs is None:
                        loss, _ = fn(m, b)
                        (loss * 0.5).backward()
                    else:
                        loss, _ = gs(b)
                    ls.append(float(loss))
                opt.step()
                opt.zero_grad(set_to_none=gs is None)
            losses.append(torch.tensor(ls))
        pe = [p for p in models[0].parameters() if p.requires_grad]
        pg = [p for p in models[1].parameters() if p.requires_grad]
        out[mode] = {"loss": rel(losses[1], losses[0]), "params": max(rel(a, b) for a, b in zip(pg, pe)),
                     "captured": gs.graph is not None and not gs.failed}
    return out


def generate_graph_equals_hf():
    from linearize import LinearizeConfig, convert
    from linearize.generation import fast_generate

    out = {}
    for method in ("hedgehog", "lizard", "gsa"):
        torch.manual_seed(0)
        m = convert(tiny_llama().eval(), LinearizeConfig(method=method, window=16, feature_dim=32,
                                                                   chunk_size=32, num_slots=32)).to(dev)
        with torch.no_grad():
            for _, p in linearize.new_parameters(m):
                p.add_(torch.randn_like(p) * 0.1)
        x = torch.randint(0, 101, (3, 77), device=dev)
        ref = m.generate(x, max_new_tokens=40, do_sample=False)
        got, s = fast_generate(m, x, 40, return_stats=True)
        # HF stops a row at EOS and pads it with EOS: compare each row up to its first EOS
        eos = m.generation_config.eos_token_id
        same = []
        for r, g in zip(ref[:, 77:], got[:, 77:]):
            hit = (r == eos).nonzero()
            n = int(hit[0]) + 1 if len(hit) else len(r)
            same.append(bool(torch.equal(r[:n], g[:n])))
        out[method] = f"equal_up_to_eos={same} graph={s.graph}"
    return out


def rmsnorm_kernel():
    """kernels/rmsnorm.py (bf16, no autograd) vs linearize.rmsnorm.rms_norm (HF's formula, eager) at
    the prefill's [16, 16384, 576] and at a decode step's [16, 1, 576]; plus both times."""
    from linearize.kernels.rmsnorm import rms_norm_triton
    from linearize.rmsnorm import rms_norm

    torch.manual_seed(6)
    w = (1 + 0.1 * torch.randn(576, device=dev)).bfloat16()
    out = {}
    with torch.no_grad():
        for name, shape in (("prefill", (16, 16384, 576)), ("step", (16, 1, 576))):
            x = torch.randn(*shape, device=dev, dtype=torch.bfloat16) * 3
            y, y_ref = rms_norm_triton(x, w, 1e-5), rms_norm(x, w, 1e-5)
            out[name] = rel(y, y_ref)
            out[name + "_exact_frac"] = round((y == y_ref).float().mean().item(), 4)
        x = torch.randn(16, 16384, 576, device=dev, dtype=torch.bfloat16)
        for label, fn in (("ms_kernel", rms_norm_triton), ("ms_eager_ref", rms_norm)):
            out[label] = ms(lambda: fn(x, w, 1e-5))
    return out


def training_kernels():
    """Stage 2's kernels in bf16 at SmolLM2's training shapes (16 x 1024): RMSNorm's and RoPE's
    backward against fp32 autograd through the references, the LM loss (kernels/cross_entropy.py via
    linearize.lm_loss) against HF's full-logits loss in value and dh; with times of ours and of the
    eager references, forward + backward."""
    from linearize.attention.base import rope_head_major
    from linearize.kernels.rmsnorm import rms_norm_triton
    from linearize.kernels.rope import rope_head_major_triton
    from linearize.lm_loss import lm_loss
    from linearize.rmsnorm import rms_norm

    torch.manual_seed(8)
    out = {}
    B, T, N = 16, 1024, 576
    x = (torch.randn(B, T, N, device=dev) * 3).bfloat16().requires_grad_()
    w = (1 + 0.1 * torch.randn(N, device=dev)).bfloat16().requires_grad_()
    dy = torch.randn(B, T, N, device=dev).bfloat16()
    xf, wf = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    ref = torch.autograd.grad((rms_norm(xf, wf, 1e-5) * dy.float()).sum(), (xf, wf))
    got = torch.autograd.grad((rms_norm_triton(x, w, 1e-5) * dy).sum(), (x, w))
    out["rmsnorm_dx"], out["rmsnorm_dw"] = rel(got[0], ref[0]), rel(got[1], ref[1])
    wz = w.detach()  # frozen, as in stage 2
    for label, fn in (("ms_rmsnorm_fwd_bwd", rms_norm_triton), ("ms_rmsnorm_fwd_bwd_eager", rms_norm)):
        out[label] = ms(lambda: torch.autograd.grad((fn(x, wz, 1e-5) * dy).sum(), (x,)))

    H, Hkv, D = 9, 3, 64
    q = torch.randn(B, T, H * D, device=dev).bfloat16().requires_grad_()
    k = torch.randn(B, T, Hkv * D, device=dev).bfloat16().requires_grad_()
    ang = torch.arange(T, device=dev)[:, None] * (10000 ** (-torch.arange(D // 2, device=dev) / (D // 2)))[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[None], torch.cat([ang.sin()] * 2, -1)[None]
    dq, dk = torch.randn(B, H, T, D, device=dev).bfloat16(), torch.randn(B, Hkv, T, D, device=dev).bfloat16()
    qf, kf = q.detach().float().requires_grad_(), k.detach().float().requires_grad_()

    def rope_loss(fn, a, b, c, s):
        q2, k2 = fn(a.view(B, T, H, D), b.view(B, T, Hkv, D), c, s)
        return (q2 * dq.to(q2.dtype)).sum() + (k2 * dk.to(k2.dtype)).sum()
    ref = torch.autograd.grad(rope_loss(rope_head_major, qf, kf, cos, sin), (qf, kf))
    got = torch.autograd.grad(rope_loss(rope_head_major_triton, q, k, cos.bfloat16(), sin.bfloat16()), (q, k))
    out["rope_dq"], out["rope_dk"] = rel(got[0], ref[0]), rel(got[1], ref[1])
    for label, fn in (("ms_rope_fwd_bwd", rope_head_major_triton), ("ms_rope_fwd_bwd_eager", rope_head_major)):
        out[label] = ms(lambda: torch.autograd.grad(rope_loss(fn, q, k, cos.bfloat16(), sin.bfloat16()), (q, k)))

    V = 49152
    h = torch.randn(B, T, N, device=dev).bfloat16().requires_grad_()
    W = (torch.randn(V, N, device=dev) * N ** -0.5).bfloat16()
    labels = torch.randint(0, V, (B, T), device=dev)
    labels[:, :100] = -100

    lab = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)  # HF's shift

    def hf(hh, ww=W):  # HF's loss on full logits, in hh's dtype, the softmax in fp32
        return torch.nn.functional.cross_entropy((hh @ ww.t()).float().reshape(-1, V), lab, ignore_index=-100)
    hf32 = h.detach().float().requires_grad_()
    l_ref = hf(hf32, W.float())
    (g_ref,) = torch.autograd.grad(l_ref, (hf32,))
    l_got = lm_loss(h, W, labels)
    (g_got,) = torch.autograd.grad(l_got, (h,))
    l_hf = hf(h)
    (g_hf,) = torch.autograd.grad(l_hf, (h,))
    out["lm_loss"], out["lm_loss_dh"] = rel(l_got, l_ref), rel(g_got, g_ref)
    out["hf_bf16_loss"], out["hf_bf16_dh"] = rel(l_hf, l_ref), rel(g_hf, g_ref)  # the bar: HF's own bf16 error
    out["ms_lm_loss_fwd_bwd"] = ms(lambda: torch.autograd.grad(lm_loss(h, W, labels), (h,)))
    out["ms_lm_loss_fwd_bwd_hf"] = ms(lambda: torch.autograd.grad(hf(h), (h,)))
    return out


def gla_prefill_tail():
    """The stored-state GLA forward at one prefill layer (B16 x 9 heads x 16K, K 128, V 65, key gate),
    no autograd: the normaliser column in the first value block (TAIL_COLUMN) against a block of
    its own; outputs compared, times in ms."""
    torch.manual_seed(7)
    B, H, T, K, V = 16, 9, 16384, 128, 65
    q, k, v = (torch.randn(B, H, T, d, device=dev, dtype=torch.bfloat16) * 0.1 for d in (K, K, V))
    gk = -torch.sigmoid(torch.randn(B, H, T, K, device=dev)) * 0.2
    fwd = lambda: chunk.gla_chunked_stored(q, k, v, gk, None, None, 64)  # noqa: E731
    out, res = {}, {}
    keep = chunk.TAIL_COLUMN, chunk.STATE_BK
    try:
        with torch.no_grad():
            for tail in (True, False):
                chunk.TAIL_COLUMN = tail
                res[tail] = fwd()
                out[f"ms_tail_{tail}"] = ms(fwd)
            chunk.TAIL_COLUMN = True
            for bk in (32, 128):  # the state walk's rows per program (default 64): more programs, or fewer re-reads of v
                chunk.STATE_BK = bk
                out[f"ms_tail_state_bk{bk}"] = ms(fwd)
    finally:
        chunk.TAIL_COLUMN, chunk.STATE_BK = keep
    out["o"], out["S"] = rel(res[True][0], res[False][0]), rel(res[True][1], res[False][1])
    return out


if __name__ == "__main__":
    import sys

    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    only = sys.argv[1:]  # name substrings: run just those checks
    _check = check

    def check(name, fn):  # noqa: F811
        if not only or any(o in name for o in only):
            _check(name, fn)
    check("chunk_gla_bf16_vs_fp32_ref", chunk_gla_bf16)
    check("chunk_gla_bf16_vs_fp32_ref_V65", lambda: chunk_gla_bf16(65))
    check("chunk_gla_fused_bf16_vs_fp32_ref_V64", lambda: chunk_gla_bf16(64))
    check("hybrid_chunk_and_steps_bf16", hybrid_chunk_and_steps)
    check("hybrid_chunk_grads_bf16_vs_fp32_ref", hybrid_chunk_grads_bf16)
    check("feature_map_compiled_bf16_vs_fp32", feature_map_compiled)
    check("feature_map_kernel_bf16_vs_fp32", feature_map_kernel)
    check("rmsnorm_kernel_bf16_vs_eager", rmsnorm_kernel)
    check("training_kernels_bf16_vs_fp32", training_kernels)
    check("gla_prefill_tail_column", gla_prefill_tail)
    check("gsa_chunk_and_steps_bf16", gsa_chunk_and_steps)
    check("fast_generate_graph_vs_hf_fp32", generate_graph_equals_hf)
    check("graphed_training_vs_eager_fp32", graphed_training_equals_eager)
