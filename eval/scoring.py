"""Batched continuation scoring: the loglikelihood of many (context, continuation) pairs per forward.

lm-eval's HF wrapper scores one request at a time after each forward: it slices the full
``[batch, seq, vocab]`` log-softmax per request and moves a few scalars to the host for each, so a
small model on a GPU spends most of an evaluation waiting on Python and on device syncs. This
module does the same arithmetic per batch:

* requests whose model input is identical (the choices of a multiple-choice item with one-token
  continuations) share one row;
* rows are packed longest first under a row cap and a padded-token cap (so 8K-token perplexity
  windows and 100-token PIQA items both make sensible batches);
* the LM head runs only at continuation positions, ``log p(t_i | t_<i)`` is summed per request on
  the device, and each batch syncs once;
* on CUDA the decoder forward is replayed from a CUDA graph, one per padded shape: widths are
  rounded up to a few buckets and every batch of a bucket has the same row count, so a converted
  model's hundreds of small launches per layer cost one launch per batch (padding to the right of
  a causal model changes nothing before it).

    score(request) = sum_{i in continuation} log_softmax(W h_{i-1})[t_i],
    greedy(request) = all_i argmax(W h_{i-1}) == t_i

Inputs are built exactly as lm-eval builds them for causal models: ``(ctx + cont)[-(max_length+1):][:-1]``,
right-padded, no attention mask (a causal model never reads the padding to its right).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Row:
    """One model input shared by the requests that need it; ``targets``: (request, first position, tokens)."""

    tokens: list[int]
    targets: list[tuple[int, int, list[int]]]


def build_rows(pairs: list[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    """pairs[i] = (context tokens, continuation tokens) -> rows, longest first, identical inputs merged."""
    rows: dict[tuple[int, ...], Row] = {}
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError(f"request {i}: empty context or continuation (lm-eval adds a prefix token to empty contexts)")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_length {max_length}")
        whole = (ctx + cont)[-(max_length + 1):]
        inp = tuple(whole[:-1])
        row = rows.setdefault(inp, Row(list(inp), []))
        row.targets.append((i, len(inp) - len(cont), whole[-len(cont):]))
    return sorted(rows.values(), key=lambda r: -len(r.tokens))


def rows_for(width: int, max_rows: int, max_tokens: int) -> int:
    """Rows of ``width`` padded tokens that fit a batch: at most ``max_rows`` and ``max_tokens``, at least 1."""
    return max(1, min(max_rows, max_tokens // max(1, width)))


def plan_batches(lengths: list[int], max_rows: int, max_tokens: int) -> list[range]:
    """Split rows (lengths sorted descending) into consecutive batches with at most ``max_rows`` rows
    and at most ``max_tokens`` padded tokens (rows x the batch's first length); never an empty batch."""
    out, start = [], 0
    while start < len(lengths):
        n = min(rows_for(lengths[start], max_rows, max_tokens), len(lengths) - start)
        out.append(range(start, start + n))
        start += n
    return out


def bucket_width(T: int) -> int:
    """Padded width for CUDA-graph shapes: multiples of 64 up to 1K, of 256 up to 4K, then of 1K."""
    q = 64 if T <= 1024 else 256 if T <= 4096 else 1024
    return -(-T // q) * q




class DecoderRunner:
    """``[B, T]`` token ids -> the decoder's last hidden state ``[B, T, hidden]``.

    With ``graphs`` (CUDA only) each new input shape is run twice eagerly on a side stream (torch.compile
    and Triton compile there), then captured; later batches of that shape copy their ids into the
    static input and replay. All graphs share one memory pool: a batch's output is consumed before the
    next replay. If a capture fails the runner says why and stays eager.
    """

    def __init__(self, decoder, graphs: bool):
        self.decoder, self.graphs = decoder, graphs
        self._captured: dict[tuple[int, int], tuple] = {}
        self._pool = None

    def eager(self, x):
        return self.decoder(input_ids=x, use_cache=False).last_hidden_state

    def __call__(self, x):
        if not self.graphs:
            return self.eager(x)
        key = tuple(x.shape)
        if key not in self._captured:
            try:
                self._captured[key] = self._capture(x)
            except Exception as e:  # noqa: BLE001 - any capture failure: keep scoring, eagerly
                import warnings

                warnings.warn(f"CUDA graph capture of the decoder failed ({type(e).__name__}: {e}); scoring eagerly")
                self.graphs = False
                torch.cuda.synchronize()
                return self.eager(x)
        static_x, static_h, graph = self._captured[key]
        static_x.copy_(x)
        graph.replay()
        return static_h

    def _capture(self, x):
        static_x = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.eager(static_x)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_h = self.eager(static_x)
        return static_x, static_h, graph


def fast_path_supported(model) -> bool:
    """True for models whose logits are ``lm_head(decoder(x).last_hidden_state)`` with nothing after
    (the Llama, Mistral and Qwen2 families, and their linearized subclasses)."""
    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    return isinstance(model, (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM))


@torch.no_grad()
def score(model, pairs: list[tuple[list[int], list[int]]], *, max_length: int, max_rows: int, max_tokens: int,
          pad_id: int = 0, head_rows: int = 4096, progress=None, cuda_graphs: bool | None = None,
          pad_shapes: bool | None = None, compile_glue: bool = False) -> list[tuple[float, bool]]:
    """[(sum of continuation log-probs, continuation is the greedy decode)] per pair, in input order.

    model:      a causal LM for which :func:`fast_path_supported` holds.
    max_rows:   rows per forward; max_tokens: padded tokens per forward.
    head_rows:  continuation positions per LM-head call (bounds the fp32 ``[rows, vocab]`` buffer).
    progress:   optional callable(n) told how many requests each batch finished.
    cuda_graphs: replay the decoder from CUDA graphs (default: on CUDA devices).
    pad_shapes: bucket widths and fill every batch to its bucket's row count (default: with graphs).
    compile_glue: let ``linearize.attention.fusion`` torch.compile the attention glue. Off by default:
                the CUDA graphs already take out the launch overhead, and compiling for each new
                width cost more than it saved (H100, 2000 piqa + hellaswag documents: 27.2 s
                compiled, 11.8 s eager).
    """
    import contextlib

    from linearize.attention import fusion

    with contextlib.nullcontext() if compile_glue else fusion.suspended():
        return _score(model, pairs, max_length=max_length, max_rows=max_rows, max_tokens=max_tokens, pad_id=pad_id,
                      head_rows=head_rows, progress=progress, cuda_graphs=cuda_graphs, pad_shapes=pad_shapes)


def _score(model, pairs, *, max_length, max_rows, max_tokens, pad_id, head_rows, progress, cuda_graphs, pad_shapes):
    device = next(model.parameters()).device
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    pad_shapes = cuda_graphs if pad_shapes is None else pad_shapes
    runner = DecoderRunner(model.get_decoder(), graphs=cuda_graphs and device.type == "cuda")
    head = model.get_output_embeddings()
    rows = build_rows(pairs, max_length)
    sums = torch.zeros(len(pairs), dtype=torch.float64)
    greedy = torch.zeros(len(pairs), dtype=torch.bool)
    lengths = [bucket_width(len(r.tokens)) if pad_shapes else len(r.tokens) for r in rows]
    for batch in plan_batches(lengths, max_rows, max_tokens):
        width = lengths[batch.start]
        n_rows = rows_for(width, max_rows, max_tokens) if pad_shapes else len(batch)
        x = torch.full((n_rows, width), pad_id, dtype=torch.long)
        b_idx, p_idx, tgt, req, touched = [], [], [], [], []
        for b, r in enumerate(rows[i] for i in batch):
            x[b, :len(r.tokens)] = torch.tensor(r.tokens)
            for i, first, toks in r.targets:
                b_idx += [b] * len(toks)
                p_idx += range(first, first + len(toks))
                tgt += toks
                req += [len(touched)] * len(toks)
                touched.append(i)
        h = runner(x.to(device))
        b_idx, p_idx, tgt, req = (torch.tensor(v, device=device) for v in (b_idx, p_idx, tgt, req))
        lp = torch.empty(len(tgt), dtype=torch.float32, device=device)
        hit = torch.empty(len(tgt), dtype=torch.bool, device=device)
        for s in range(0, len(tgt), head_rows):
            sl = slice(s, s + head_rows)
            logits = head(h[b_idx[sl], p_idx[sl]]).float()
            lp[sl] = logits.log_softmax(-1).gather(1, tgt[sl, None]).squeeze(1)
            hit[sl] = logits.argmax(-1) == tgt[sl]
        n = len(touched)
        s_dev = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, req, lp.double())
        miss = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, req, (~hit).double())
        got = torch.stack([s_dev, miss]).cpu()  # the batch's one sync
        idx = torch.tensor(touched)
        sums[idx] = got[0]
        greedy[idx] = got[1] == 0
        if progress is not None:
            progress(n)
    return [(float(s), bool(g)) for s, g in zip(sums.tolist(), greedy.tolist())]
