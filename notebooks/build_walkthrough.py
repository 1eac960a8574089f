"""Builds notebooks/walkthrough.ipynb from the cells below and executes it (outputs are stored).

    python notebooks/build_walkthrough.py            # rebuild + execute (about 8 minutes on 2 CPU cores)
"""
import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))

cells = []
md = lambda s: cells.append(nbformat.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbformat.v4.new_code_cell(s.strip()))

md("""
# linearize: a walkthrough on the real SmolLM2-135M

Convert a pretrained transformer's softmax attention into Lizard linear attention (gated linear
attention + a 64-token sliding window + meta-memory tokens), train the new parameters to mimic the
teacher (stage 1, attention transfer), LoRA-finetune (stage 2), and compare teacher and student.
Everything runs on a CPU at a toy budget (tens of steps); the GPU recipes in `recipes/` are the real runs.
""")
code("""
import os
os.environ["TQDM_DISABLE"] = "1"  # progress bars belong in terminals, not in a stored notebook
import copy, json, time
import io
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import transformers
from IPython.display import Image, Markdown, display

def show_figure(fig):
    \"\"\"Store the figure in the notebook as a PNG, whatever the kernel's plotting backend.\"\"\"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue()))

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
import torch

import linearize
from linearize import LinearizeConfig, convert, load_model
from linearize.recipes import load_recipe
from linearize.train_cli import DEFAULT_RECIPE, cmd_distill, cmd_finetune

torch.manual_seed(0)
os.chdir(os.path.dirname(os.path.abspath(linearize.__file__)) + "/..")  # recipes resolve data paths from the repo root
teacher, tok = load_model("smollm2-135m")
print(type(teacher).__name__, f"{sum(p.numel() for p in teacher.parameters()):,} parameters")
""")
md("## 1. Surgery\nEvery attention keeps its q/k/v/o weights; only feature maps, gates, meta tokens and mixing factors are new.")
code("""
cfg = load_recipe(DEFAULT_RECIPE, ["--output_dir=runs/walkthrough", "--distill.steps=24", "--finetune.steps=12",
                                   "--data.seq_len=192", "--eval.limit=50"])
student = convert(copy.deepcopy(teacher), cfg.linearize)
print(cfg.linearize)
print(f"new parameters: {linearize.surgery.count_new_parameters(student):,}")
print(student.model.layers[3].self_attn)
""")
md("## 2. Teacher vs. student attention for one head, before training")
code("""
from linearize.attention.softmax import softmax_weights

TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening to light the lamp. "
        "Ships passing the rocky coast relied on its beam, and for forty years the keeper never missed a night. "
        "One stormy evening the lamp would not light. He checked the oil, the wick and the glass, and found "
        "nothing wrong. Down in the harbour the fishing boats were still out, their crews trusting the light "
        "to guide them home. The keeper remembered the spare lamp his father had left in the cellar, wrapped in "
        "an old sail. He ran down the stairs, found it, and carried it up through the wind. By midnight the beam "
        "swept the water again, and one by one the boats came home.")
LAYER, HEAD = 12, 2
enc = tok(TEXT, return_tensors="pt")
print(enc["input_ids"].shape[1], "tokens; the window is", cfg.linearize.window, "so keys further back than that reach the student only through its linear memory")

def attention_maps(model, layer=LAYER, head=HEAD):
    attn = model.model.layers[layer].self_attn
    seen = {}
    def grab(mod, args, kwargs):
        seen["x"], seen["pe"] = kwargs["hidden_states"], kwargs["position_embeddings"]
    h = attn.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**enc)
        q, k, v = attn.project(seen["x"], seen["pe"])
        t = softmax_weights(q, attn.expand(k), attn.scaling)[0, head]
        s = attn.student_weights(q, k, v, seen["x"], None)[0, head]
    h.remove()
    return t, s

def show(t, s, title):
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.5))
    for a, w, name in zip(ax, (t, s), ("teacher (softmax)", "student (Lizard)")):
        a.imshow(w.float().clamp_min(1e-4).log10(), cmap="magma", vmin=-4, vmax=0)
        a.set_title(name); a.set_xlabel("key"); a.set_ylabel("query")
    fig.suptitle(f"{title}: layer {LAYER}, head {HEAD} (log10 weight)")
    show_figure(fig)

t0, s0 = attention_maps(student)
show(t0, s0, "before stage 1")
""")
md("## 3. Stage 1: attention transfer\nOnly the new parameters train; each layer's linear attention learns to reproduce its own softmax output on the teacher's hidden states (no second model in memory).")
code("""
t = time.time()
model, tok, train, val, r1 = cmd_distill(cfg)
print(f"stage 1: {r1.steps} steps in {time.time() - t:.0f} s, final loss {r1.final_loss:.4g}")
m1 = [json.loads(l) for l in open(f"{cfg.output_dir}/distill/metrics.jsonl")]
layers = sorted((k for k in m1[0] if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))
first = [m1[0][k] for k in layers]; last = [sum(m[k] for m in m1[-5:]) / 5 for k in layers]
fig, ax = plt.subplots(figsize=(10, 3.5))
x = range(len(layers))
ax.bar([i - 0.2 for i in x], first, 0.4, label="step 1"); ax.bar([i + 0.2 for i in x], last, 0.4, label=f"last 5 steps")
ax.set_yscale("log"); ax.set_xlabel("layer"); ax.set_ylabel("MSE vs. softmax output"); ax.legend(); ax.set_title("per-layer stage-1 loss")
show_figure(fig)
""")
code("""
t1, s1 = attention_maps(model)
show(t1, s1, "after stage 1")
""")
md("## 4. Stage 2: LoRA finetune on next-token loss")
code("""
t = time.time()
peft_model, r2 = cmd_finetune(cfg, _ctx=(model, tok, train, val), _stage1_loaded=True)
print(f"stage 2: {r2.steps} steps in {time.time() - t:.0f} s, final loss {r2.final_loss:.4g}")
m2 = [json.loads(l) for l in open(f"{cfg.output_dir}/finetune/metrics.jsonl")]
fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
ax[0].plot([m["step"] for m in m1], [m["loss"] for m in m1]); ax[0].set_title("stage 1: summed transfer loss"); ax[0].set_yscale("log")
ax[1].plot([m["step"] for m in m2], [m["loss"] for m in m2]); ax[1].set_title("stage 2: next-token loss")
for a in ax: a.set_xlabel("step")
show_figure(fig)
""")
md("## 5. Before/after evaluation (PIQA, 50 items: a smoke-sized sample, not a benchmark)")
code("""
from linearize.eval import run_report

report = run_report("smollm2-135m", f"{cfg.output_dir}/merged", tasks=["piqa"], limit=50,
                    out_dir=f"{cfg.output_dir}/eval", batch_size=8)
display(Markdown(open(f"{cfg.output_dir}/eval/report.md").read()))
display(Image(f"{cfg.output_dir}/eval/report.png"))
""")
md("## 6. Generated text, side by side (greedy; the student decodes with a fixed-size recurrent state)")
code("""
student_final, _ = load_model(f"{cfg.output_dir}/merged")
for prompt in ["The three primary colors are", "Once upon a time, in a small village,"]:
    ids = tok(prompt, return_tensors="pt")
    outs = {}
    for name, m in (("teacher", teacher), ("student", student_final)):
        with torch.no_grad():
            g = m.generate(**ids, max_new_tokens=30, do_sample=False, pad_token_id=tok.pad_token_id)
        outs[name] = tok.decode(g[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    display(Markdown(f"**{prompt}**\\n\\n| teacher | student |\\n|---|---|\\n| {outs['teacher']!r} | {outs['student']!r} |"))
""")

nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
path = os.path.join(HERE, "walkthrough.ipynb")
if "--no-execute" not in sys.argv:
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
nbformat.write(nb, path)
print("wrote", path)
