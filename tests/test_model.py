"""FoveatedVLM and its encoder against references: the HF DINOv2 layers, upstream fVLM's bug list (its
section 7), autoregressive inference (causality), paired-seed init, mode equivalences, the loss masking,
param groups vs torch.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fvlm.checkpoint import unwrap_state_dict
from fvlm.config import Config, load_config
from fvlm.encoder import attention_entropy, derive_seed
from fvlm.model import FoveatedVLM
from fvlm.train import build, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> Config:
    return load_config(None, {"model.scale": 1, "world.val_size": 64, "train.steps": 1, **overrides})


def make(**overrides) -> tuple[FoveatedVLM, object]:
    model, world = build(tiny(**overrides))
    return model.eval(), world


def centred_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the Pearson correlation of two token batches [n, D] (upstream's BUG-001 check)."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(F.cosine_similarity(a, b, dim=1).mean())


def mixed_batch(world, n: int = 4) -> dict:
    """n clips with both caption lengths (turn and no turn), so the short ones carry padding."""
    b = world.batch("train", range(32))
    lengths = b["attention_mask"].sum(1)
    short = torch.nonzero(lengths < lengths.max()).flatten()[: n // 2]
    full = torch.nonzero(lengths == lengths.max()).flatten()[: n - len(short)]
    idx = torch.cat([full, short]).sort().values.tolist()
    assert len(short) and len(full)
    return world.batch("train", idx)


# ----------------------------------------------------------------------------- upstream BUG-001 / 002 / 004


def test_query_projection_has_no_bias_unless_asked():
    model, _ = make()
    assert model.encoder.query_input_proj.bias is None  # BUG-002
    biased, _ = make(**{"model.query_bias": True})
    assert biased.encoder.query_input_proj.bias is not None
    assert biased.encoder.query_input_proj.bias.shape == (biased.encoder.hidden,)


@pytest.mark.parametrize("std", [1.0, 0.02])
def test_learned_queries_have_the_configured_init_std(std):
    model, _ = make(**{"model.query_dim": 512, "model.query_init_std": std})  # 1024 draws: std error ~2%
    values = torch.cat([model.q_static.detach().flatten(), model.q_init.detach().flatten()])
    assert values.std().item() == pytest.approx(std, rel=0.1)  # BUG-001: 0.02 was upstream's bug
    assert abs(values.mean().item()) < 0.15 * std


def _reads(model, world, n=16, seed=0):
    """Tokens and attention of two independent random queries and of -q_a, on the same frames."""
    frames = world.batch("train", range(n))["frames"][:, 0]
    g = torch.Generator().manual_seed(seed)
    std = model.cfg.query_init_std
    qa = torch.randn(n, model.cfg.query_dim, generator=g) * std
    qb = torch.randn(n, model.cfg.query_dim, generator=g) * std
    with torch.no_grad():
        cache = model.encoder.encode(frames)
        return [model.encoder.attend(cache, q) for q in (qa, qb, -qa)]


@pytest.mark.parametrize("scale", [1, 2])
def test_different_queries_read_different_tokens_and_attention(scale):
    """BUG-002: attend(q) and attend(-q) must differ, in the token and in where the query looks."""
    model, world = make(**{"model.scale": scale})
    (za, aa), _, (zn, an) = _reads(model, world)
    assert float((za - zn).norm() / za.norm()) > 0.5
    assert float((aa - an).abs().max()) > 0.1  # measured 0.47-0.61 at the dial's init
    # the attention maps are distributions over the P = grid^2 + 1 keys (CLS kept, upstream 2.2)
    grid = world.cfg.frame_size // model.cfg.patch_size
    assert aa.shape[-1] == grid * grid + 1
    assert torch.allclose(aa.sum(-1), torch.ones(()), atol=1e-5) and aa.min() >= 0


def test_bug001_mechanism_bias_plus_small_init_collapses_the_queries_and_the_fix_does_not():
    """Upstream BUG-001/002: with a query-projection bias and std-0.02 queries, two random queries gave the
    same token (corr 0.9998); after the fix 0.52. We reproduce both sides on the same frames."""
    fixed, world = make(**{"model.scale": 2})
    buggy, _ = make(**{"model.scale": 2, "model.query_bias": True, "model.query_init_std": 0.02})
    (za, _), (zb, _), _ = _reads(fixed, world)
    (ya, _), (yb, _), _ = _reads(buggy, world)
    corr_fixed, corr_buggy = centred_corr(za, zb), centred_corr(ya, yb)
    print(f"token corr of two random queries: fixed {corr_fixed:.3f}, upstream-bug config {corr_buggy:.4f}")
    assert corr_buggy > 0.98  # measured 0.993-0.998
    assert corr_fixed < 0.85  # measured 0.56-0.70


def test_bug004_deep_query_is_more_selective_than_shallow():
    """BUG-004: one cross-attention on final features gave near-identical tokens (corr 0.98)."""
    deep, world = make(**{"model.scale": 2})
    shallow, _ = make(**{"model.scale": 2, "model.deep_query": False})
    (za, _), (zb, _), _ = _reads(deep, world)
    (ya, _), (yb, _), _ = _reads(shallow, world)
    corr_deep, corr_shallow = centred_corr(za, zb), centred_corr(ya, yb)
    print(f"token corr of two random queries: deep {corr_deep:.3f}, shallow {corr_shallow:.3f}")
    assert corr_deep < corr_shallow - 0.15  # measured 0.57-0.64 vs 0.97-0.99 at init


def test_attention_entropy_against_reference_values_and_at_init():
    p = 17
    uniform = torch.full((3, 2, p), 1.0 / p)
    onehot = F.one_hot(torch.tensor([[0, 5], [3, 16], [1, 1]]), p).float()
    assert attention_entropy(uniform).item() == pytest.approx(math.log(p), abs=1e-5)
    assert attention_entropy(onehot).item() == pytest.approx(0.0, abs=1e-6)
    two = torch.zeros(1, p)
    two[0, :2] = 0.5
    assert attention_entropy(two).item() == pytest.approx(math.log(2), abs=1e-6)
    # At the dial's init the query's attention is already not uniform (upstream's BUG-001 symptom was
    # entropy == ln P exactly); entropy is bounded by ln P.
    model, world = make(**{"model.scale": 2})
    (_, aa), (_, ab), (_, an) = _reads(model, world)
    ln_p = math.log(aa.shape[-1])
    ents = [attention_entropy(a).item() for a in (aa, ab, an)]
    print(f"entropy at init: {ents} (ln P = {ln_p:.3f})")
    assert all(e <= ln_p + 1e-5 for e in ents)
    assert max(ents) < ln_p - 0.1  # measured ln P - 0.26 to 0.28


# ----------------------------------------------------------------------------- the encoder vs HF DINOv2


def test_patch_pass_matches_hf_dinov2():
    """The patch pass (own per-layer code, K/V computed once) equals HF Dinov2Model's forward."""
    model, world = make(**{"model.deep_query": False})  # shallow keeps the final layer-normed features
    frames = world.batch("train", range(3))["frames"].flatten(0, 1)
    enc = model.encoder
    with torch.no_grad():
        cache = enc.encode(frames)
        ref = enc.dino((frames - enc.pixel_mean) / enc.pixel_std).last_hidden_state
        h = enc.dino.embeddings((frames - enc.pixel_mean) / enc.pixel_std)
        for layer, k in zip(enc.dino.encoder.layer, cache.keys, strict=True):
            k_ref = layer.attention.k_proj(layer.norm1(h))
            assert torch.allclose(enc._merge(k), k_ref, atol=1e-5)
            h = layer(h)
    assert torch.allclose(cache.features, ref, atol=1e-5)


@pytest.mark.parametrize("layers_used", [None, 1])
def test_deep_query_equals_an_extra_token_in_the_hf_layers(layers_used):
    """Reference for the deep query: run the HF Dinov2Layer stack on [patches, query] with a mask where
    patches never see the query and the query does not see itself (upstream 2.3); the query's final state
    through dino.layernorm and output_proj must equal encoder.attend (pos code off: it is added after)."""
    model, world = make(**{"model.scale": 2, "model.pos_code": False, "model.layers_used": layers_used})
    enc = model.encoder
    frames = world.batch("train", range(4))["frames"][:, 2]
    q = torch.randn(4, model.cfg.query_dim)
    with torch.no_grad():
        z, attn = enc.attend(enc.encode(frames), q)
        h = enc.dino.embeddings((frames - enc.pixel_mean) / enc.pixel_std)
        p = h.shape[1]
        seq = torch.cat([h, enc.query_input_proj(q)[:, None]], dim=1)
        mask = torch.zeros(1, 1, p + 1, p + 1)
        mask[..., :p, p] = -1e9  # patches do not see the query
        mask[..., p, p] = -1e9  # the query reads only the patch K/V
        layers = enc.dino.encoder.layer[: layers_used or len(enc.dino.encoder.layer)]
        for layer in layers:
            before = seq
            seq = layer(seq, attention_mask=mask)
        z_ref = enc.output_proj(enc.dino.layernorm(seq[:, p]))
        # the last layer's attention map, from the reference's own states
        last = layers[-1]
        x = last.norm1(before)
        qh, kh = enc._split(last.attention.q_proj(x[:, p:])), enc._split(last.attention.k_proj(x[:, :p]))
        a_ref = ((qh @ kh.transpose(-1, -2)) / math.sqrt(enc.head_dim)).softmax(-1).squeeze(2)
    assert attn.shape[1] == len(layers)
    assert torch.allclose(z, z_ref, atol=1e-5)
    assert torch.allclose(attn[:, -1], a_ref, atol=1e-5)


# ----------------------------------------------------------------------------- modes


MODES = ("coarse_fine", "coarse_only", "autoregressive")


@pytest.mark.parametrize("deep", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_one_mode_per_call_per_sample_loop_equals_batched(mode, deep):
    """BUG-003: one mode for the whole batch; a per-sample loop gives the batched logits, and the batched
    loss is the token-weighted mean of the per-sample losses (CE is a mean over scored tokens)."""
    model, world = make(**{"model.deep_query": deep})
    batch = mixed_batch(world, 4)
    with torch.no_grad():
        full = model(batch, mode=mode)
        losses, counts = [], []
        for i in range(4):
            width = int(batch["attention_mask"][i].sum())
            one = {
                k: (
                    v[i : i + 1, :width]
                    if k in ("input_ids", "attention_mask", "loss_mask", "labels")
                    else v[i : i + 1]
                )
                for k, v in batch.items()
                if torch.is_tensor(v)
            }
            out = model(one, mode=mode)
            assert torch.allclose(out.logits[0], full.logits[i, :width], atol=1e-5)
            losses.append(out.loss_fine if mode != "coarse_only" else out.loss_coarse)
            counts.append(int(one["loss_mask"][0, 1:].sum()))
    weighted = sum(loss * c for loss, c in zip(losses, counts, strict=True)) / sum(counts)
    expected = full.loss_fine if mode != "coarse_only" else full.loss_coarse
    assert torch.allclose(weighted, expected, atol=1e-5)


# parameters no mode uses: DINO's mask token (only for masked-image pre-training)
UNUSED = {"encoder.dino.embeddings.mask_token"}


@pytest.mark.parametrize("deep", [True, False])
@pytest.mark.parametrize(
    "mode, extra, unused",
    [
        ("coarse_fine", {}, UNUSED),
        ("coarse_fine", {"model.fine_iters": 2, "model.fine_read": "hires"}, UNUSED),
        ("coarse_fine", {"model.objective": "joint"}, UNUSED),
        ("coarse_only", {}, UNUSED | {"q_init", "llm_to_query.weight", "llm_to_query.bias"}),
        ("autoregressive", {}, None),
    ],
)
def test_every_mode_runs_under_both_deep_query_values(mode, extra, unused, deep):
    """Upstream BUG-005/006 (KNOWLEDGE): a mode crashed under one query layout. Every mode runs under both,
    gives finite losses and well-formed maps, and the training modes send gradients to every used param."""
    model, world = make(**{"model.deep_query": deep, **extra})
    model.train()
    batch = world.batch("train", range(3))
    b, t = batch["frames"].shape[:2]
    out = model(batch, mode=mode)
    assert torch.isfinite(out.loss)
    if out.logits is not None:
        assert out.logits.shape == (*batch["input_ids"].shape, len(world.tokenizer))
    attn = out.attn_fine if out.attn_fine is not None else out.attn_coarse
    layers = model.encoder.layers_used if deep else 1
    assert attn.shape[:4] == (b, t, layers, model.encoder.heads)
    assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
    if unused is None:  # autoregressive: inference only
        assert not out.loss.requires_grad
        return
    out.loss.backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == unused
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_mode_is_refused():
    model, world = make()
    with pytest.raises(ValueError, match="mode"):
        model(world.batch("train", range(2)), mode="fine_only")


def test_coarse_visual_states_do_not_depend_on_the_text():
    """Causal invariance the model relies on: one LLM pass over [coarse tokens, text] gives both the
    queries and the coarse loss. So the hidden states at the visual positions (and the queries made from
    them) must not depend on the text, and the fine loss must equal the two-pass computation."""
    model, world = make(**{"model.lambda_coarse": 0.0})
    batch = world.batch("train", range(4))
    other = dict(
        batch, input_ids=torch.flip(batch["input_ids"], [0]), loss_mask=torch.flip(batch["loss_mask"], [0])
    )
    t = batch["frames"].shape[1]
    captured = []
    hook = model.llm_to_query.register_forward_hook(lambda mod, args, out: captured.append(args[0].detach()))
    with torch.no_grad():
        one_pass = model(batch, compute_coarse=True)  # queries from the pass over [coarse, text]
        model(other, compute_coarse=True)  # same frames, other captions
        two_pass = model(
            batch
        )  # lambda 0 and no coarse loss: queries from a pass over the coarse tokens only
    hook.remove()
    assert len(captured) == 3 and captured[0].shape[1] == t
    assert not torch.equal(batch["input_ids"], other["input_ids"])
    assert torch.allclose(captured[0], captured[1], atol=1e-5)
    assert torch.allclose(captured[0], captured[2], atol=1e-5)
    assert torch.allclose(one_pass.loss_fine, two_pass.loss_fine, atol=1e-5)
    assert one_pass.loss_coarse is not None and two_pass.loss_coarse is None


@pytest.mark.parametrize(
    "extra", [{}, {"model.deep_query": False}, {"model.fine_read": "hires"}, {"model.objective": "joint"}]
)
def test_autoregressive_kv_cache_equals_recomputing_the_prefix(extra):
    model, world = make(**extra)
    batch = mixed_batch(world, 4)
    cached = model.forward_autoregressive(batch, use_cache=True)
    plain = model.forward_autoregressive(batch, use_cache=False)
    assert torch.allclose(cached.loss, plain.loss, atol=1e-5)
    if cached.logits is not None:
        assert torch.allclose(cached.logits, plain.logits, atol=1e-4)
    assert torch.allclose(cached.attn_fine, plain.attn_fine, atol=1e-5)
    # and the autoregressive pass is a different computation from coarse_fine (queries from fine history)
    with torch.no_grad():
        assert not torch.allclose(model(batch).loss_fine, cached.loss_fine, atol=1e-6)


# ----------------------------------------------------------------------------- paired seeds pair the init


# every module built under its own (seed, name) stream; the state_dict prefixes of their weights
SEEDED = {
    "dino": "encoder.dino.",
    "llm": "llm.",
    "query_input_proj": "encoder.query_input_proj.weight",
    "output_proj": "encoder.output_proj.",
    "pos_proj": "encoder.pos_proj.",
    "dino_to_llm": "dino_to_llm.",
    "llm_to_query": "llm_to_query.",
    "q_static": "q_static",
    "q_init": "q_init",
}


def test_module_seeds_are_stable_across_processes():
    """sha256 of (seed, name), not Python's hash() (salted per process: PYTHONHASHSEED)."""
    assert derive_seed(0, "llm") == 5170355650908867449
    assert derive_seed(1, "llm") != derive_seed(0, "llm") != derive_seed(0, "dino")


@pytest.mark.parametrize(
    "knob",
    [
        {"model.query_bias": True},
        {"model.pos_code": False},
        {"model.fine_read": "hires"},
        {"model.objective": "joint"},
        {"model.fine_iters": 2},
        {"model.query_bias": True, "model.pos_code": False, "model.objective": "joint"},
    ],
    ids=lambda k: ",".join(f"{key.split('.')[-1]}={v}" for key, v in k.items()),
)
def test_paired_seeds_share_the_init_of_every_shared_module(knob):
    """At the same seed, an arm that adds or drops a module (a bias, pos_proj, the prediction head) has
    bitwise the baseline's weights in every module both have; another seed changes every seeded module."""
    base, _ = make()
    arm, _ = make(**knob)
    a, b = base.state_dict(), arm.state_dict()
    shared = [k for k in a if k in b and a[k].shape == b[k].shape]
    assert len(shared) >= len(a) - 2  # pos_code=false drops pos_proj.weight; nothing else goes missing
    differ = [k for k in shared if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]
    for prefix in SEEDED.values():  # the named modules are among the shared ones (pos_proj unless dropped)
        assert any(k.startswith(prefix) for k in shared) or knob.get("model.pos_code") is False, prefix
    if "model.objective" in knob:  # the head is seeded too: the same in two builds of the arm
        again, _ = make(**knob)
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in b.items() if k.startswith("head."))
    other, _ = make(**{"train.seed": 1})
    o = other.state_dict()
    for name, prefix in SEEDED.items():
        keys = [k for k in a if k.startswith(prefix) and a[k].std() > 0]  # random draws, not constants
        assert keys and any(not torch.equal(a[k], o[k]) for k in keys), name


# ----------------------------------------------------------------------------- causality


def _causal_model(**overrides):
    return make(**{"world.frames": 3, **overrides})


@pytest.mark.parametrize("deep", [True, False])
def test_fine_iters_at_least_frames_equals_autoregressive_inference(deep):
    """Why exact: frame 0 is always read with q_init, and frame t with the query the LLM made from the
    fine tokens of frames < t in the previous iteration. So after iteration i the reads of frames < i equal
    the autoregressive ones (induction on i), and with fine_iters >= T every read does; the final pass over
    [fine tokens, caption] is then the autoregressive one too, up to float rounding (KV cache vs full pass)."""
    model, world = _causal_model(**{"model.fine_iters": 3, "model.deep_query": deep})
    batch = mixed_batch(world, 4)
    with torch.no_grad():
        par = model(batch)
        ar = model.forward_autoregressive(batch)
    assert par.attn_fine.shape[1] == 3 and par.tokens_fine.shape == ar.tokens_fine.shape
    assert torch.allclose(par.tokens_fine, ar.tokens_fine, atol=1e-5)
    assert torch.allclose(par.attn_fine, ar.attn_fine, atol=1e-5)
    assert torch.allclose(par.loss_fine, ar.loss_fine, atol=1e-5)
    assert torch.allclose(par.logits, ar.logits, atol=1e-4)
    # the control: with fewer iterations than frames, the last frame's read is not the inference one yet
    short, _ = _causal_model(**{"model.fine_iters": 2, "model.deep_query": deep})
    with torch.no_grad():
        two = short(batch)
    assert torch.allclose(two.attn_fine[:, :2], ar.attn_fine[:, :2], atol=1e-5)  # frames < 2: exact
    assert not torch.allclose(two.attn_fine[:, 2], ar.attn_fine[:, 2], atol=1e-4)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"model.fine_iters": 2},
        {"model.fine_read": "hires", "model.deep_query": False},
        {"model.fine_read": "foveal"},
    ],
)
def test_fine_reads_of_frames_up_to_t_do_not_see_later_frames(extra):
    """coarse_fine: replacing frames > t (here by other clips' frames) leaves the fine reads of frames <= t
    (attention maps and fine tokens) unchanged, and changes the later ones."""
    model, world = make(**extra)
    batch = world.batch("train", range(4))
    other = world.batch("train", range(100, 104))["frames"]
    t_frames = batch["frames"].shape[1]
    with torch.no_grad():
        ref = model(batch)
        for t in range(t_frames - 1):
            frames = torch.cat([batch["frames"][:, : t + 1], other[:, t + 1 :]], dim=1)
            out = model(dict(batch, frames=frames))
            assert torch.allclose(out.attn_fine[:, : t + 1], ref.attn_fine[:, : t + 1], atol=1e-6), t
            assert torch.allclose(out.tokens_fine[:, : t + 1], ref.tokens_fine[:, : t + 1], atol=1e-6), t
            assert not torch.allclose(out.tokens_fine[:, t + 1 :], ref.tokens_fine[:, t + 1 :], atol=1e-4), t


# ----------------------------------------------------------------------------- the caption loss


def test_ignore_index_scores_eos_inside_the_text_but_not_padding():
    """pad == eos in the world tokenizer (like SmolLM2). Upstream's ignore_index=pad_id dropped every real
    <eos> target; with -100 the final <eos> counts and the padding after it does not."""
    model, world = make()
    tok = world.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    batch = mixed_batch(world, 4)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    lengths = batch["attention_mask"].sum(1)
    short = int(torch.nonzero(lengths < ids.shape[1])[0])
    n = int(lengths[short])
    assert ids[short, n - 1] == tok.eos_token_id and ids[short, n] == tok.pad_token_id  # eos, then padding

    def loss(b):
        with torch.no_grad():
            return model(b, mode="coarse_only")

    base = loss(batch)
    # reference: token-mean CE over exactly the targets 1..len-1 of each caption, <eos> included
    logp = base.logits[:, :-1].log_softmax(-1)
    terms = [-logp[i, j - 1, ids[i, j]] for i in range(ids.shape[0]) for j in range(1, int(lengths[i]))]
    assert torch.allclose(base.loss, torch.stack(terms).mean(), atol=1e-5)
    assert int(mask[:, 1:].sum()) == len(terms)
    # changing a padded position does not change the loss ...
    padded = dict(batch, input_ids=ids.clone())
    padded["input_ids"][short, n:] = 7
    assert torch.allclose(loss(padded).loss, base.loss, atol=1e-6)
    # ... changing the final <eos> target does
    no_eos = dict(batch, input_ids=ids.clone())
    no_eos["input_ids"][short, n - 1] = 7
    assert not torch.allclose(loss(no_eos).loss, base.loss, atol=1e-4)


# ----------------------------------------------------------------------------- state dicts, param groups


def test_compiled_state_dict_loads_into_an_eager_model():
    """Upstream: resume failed on the `_orig_mod.` prefix torch.compile adds to every key."""
    model, world = make()
    compiled = torch.compile(model, backend="eager")
    state = compiled.state_dict()
    assert all(k.startswith("_orig_mod.") for k in state)
    fresh, _ = build(tiny(**{"train.seed": 1}))
    fresh.eval()
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)  # the prefix alone breaks a strict load
    fresh.load_state_dict(unwrap_state_dict(state), strict=True)
    batch = world.batch("train", range(2))
    with torch.no_grad():
        assert torch.equal(fresh(batch).loss, model(batch).loss)


@pytest.mark.parametrize(
    "extra", [{}, {"model.freeze_dino": True}, {"model.freeze_llm": True}, {"model.objective": "joint"}]
)
def test_param_groups_partition_the_trainable_parameters(extra):
    model, _ = make(**extra)
    groups = model.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids))  # no parameter in two groups
    assert set(ids) == trainable  # every trainable parameter in one; frozen ones (and the VAE) in none
    connector = {id(p) for p in groups["connector"]}
    enc = model.encoder
    # upstream's gotcha: output_proj sat in the backbone group at 1/100 of the connector LR
    for p in (
        enc.output_proj.weight,
        enc.output_proj.bias,
        enc.query_input_proj.weight,
        model.q_static,
        model.q_init,
        model.dino_to_llm.weight,
        model.llm_to_query.weight,
    ):
        assert id(p) in connector
    assert {id(p) for p in groups["dino"]} == {id(p) for p in enc.dino.parameters() if p.requires_grad}
    assert {id(p) for p in groups["llm"]} == {id(p) for p in model.llm.parameters() if p.requires_grad}
    if model.vae is not None:
        assert not any(p.requires_grad for p in model.vae.parameters())
    if extra.get("model.freeze_dino"):
        assert not groups["dino"]
    if extra.get("model.freeze_llm"):
        assert not groups["llm"]


def test_grouped_adamw_with_ratio_1_equals_plain_torch_adamw():
    """STYLE rule 11: our param groups against plain torch. With connector_lr_ratio 1 the grouped optimizer
    must take exactly the step a single-group torch AdamW takes."""
    cfg = tiny(**{"train.connector_lr_ratio": 1.0, "train.lr": 1e-2})
    model, world = build(cfg)
    ref, _ = build(cfg)
    ref.load_state_dict(model.state_dict())
    ours = make_optimizer(model, cfg, torch.device("cpu"))
    plain = torch.optim.AdamW(
        [p for p in ref.parameters() if p.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    batch = world.batch("train", range(4))
    for net, opt in ((model, ours), (ref, plain)):
        for _ in range(2):
            opt.zero_grad()
            net(batch).loss.backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    # and the connector group's LR is the ratio times the backbone LR
    cfg10 = tiny(**{"train.connector_lr_ratio": 10.0})
    lrs = {g["name"]: g["lr"] for g in make_optimizer(model, cfg10, torch.device("cpu")).param_groups}
    assert lrs["connector"] == pytest.approx(10 * lrs["dino"]) and lrs["dino"] == lrs["llm"] == cfg10.train.lr


@pytest.mark.parametrize("scale", [1, 4])
def test_random_backbones_follow_the_dial_init_std(scale):
    cfg = tiny(**{"model.scale": scale})
    model, _ = build(cfg)
    std = cfg.model.init_std
    assert std == pytest.approx(cfg.model.llm_hidden**-0.5)
    for w in (
        model.llm.model.layers[0].self_attn.q_proj.weight,
        model.llm.model.layers[0].mlp.up_proj.weight,
        model.encoder.dino.encoder.layer[0].attention.q_proj.weight,
    ):
        assert w.std().item() == pytest.approx(std, rel=0.1)


def test_the_foveal_read_sees_detail_that_the_coarse_read_cannot():
    """fine_read=foveal: the coarse read's patches are those of the 2x average-pooled frames (a quarter of the
    patches), the fine read's those of the native frames. A pixel pattern that averages out over 2x2 blocks
    (a checkerboard of +-d) leaves every coarse output unchanged and changes the fine read."""
    model, world = make(**{"model.fine_read": "foveal"})
    batch = world.batch("train", range(2))
    frames = batch["frames"]
    cache = model._coarse_cache(frames)
    pooled = model.encoder.encode(F.avg_pool2d(frames.flatten(0, 1), 2))
    assert cache.grid * 2 == model._fine_cache(frames, cache).grid == frames.shape[-1] // model.cfg.patch_size
    assert all(torch.equal(a, b) for a, b in zip(cache.keys, pooled.keys, strict=True))
    h = frames.shape[-1]
    checker = ((torch.arange(h)[:, None] + torch.arange(h)[None, :]) % 2 * 2 - 1).float() * 0.1
    detailed = dict(batch, frames=frames + checker)  # not clamped: clamping would break the zero mean
    with torch.no_grad():
        ref, out = model(batch, compute_coarse=True), model(detailed, compute_coarse=True)
    assert torch.allclose(out.attn_coarse, ref.attn_coarse, atol=1e-5)
    assert torch.allclose(out.loss_coarse, ref.loss_coarse, atol=1e-5)
    assert not torch.allclose(out.attn_fine, ref.attn_fine, atol=1e-4)
    assert not torch.allclose(out.tokens_fine, ref.tokens_fine, atol=1e-4)


# ----------------------------------------------------------------------------- the aim (model.aim)


def _aimed(**overrides):
    """A cue-world model whose aim head is not at its zero init (so a wrong shift would show)."""
    model, world = make(**{"world.task": "cue", "model.aim": True, "world.frames": 3, **overrides})
    with torch.no_grad():
        model.llm_to_aim.weight.normal_(0, 0.5)
        model.aim_init.fill_(0.3)
    return model, world


def test_the_aim_is_causal_and_equals_autoregressive_inference():
    """The aim of frame t comes from the LLM state after frame t-1 (frame 0: aim_init), in the parallel pass
    and in true inference alike: with fine_iters >= T the two are equal; replacing frames > t leaves the
    reads of frames <= t unchanged."""
    model, world = _aimed(**{"model.fine_iters": 3})
    batch = mixed_batch(world, 4)
    with torch.no_grad():
        par, ar = model(batch), model.forward_autoregressive(batch)
        assert torch.allclose(par.attn_fine, ar.attn_fine, atol=1e-5)
        assert torch.allclose(par.loss_fine, ar.loss_fine, atol=1e-5)
        other = world.batch("train", range(100, 104))["frames"]
        for t in range(2):
            frames = torch.cat([batch["frames"][:, : t + 1], other[:, t + 1 :]], dim=1)
            out = model(dict(batch, frames=frames))
            assert torch.allclose(out.attn_fine[:, : t + 1], par.attn_fine[:, : t + 1], atol=1e-6), t
            assert not torch.allclose(out.attn_fine[:, t + 1 :], par.attn_fine[:, t + 1 :], atol=1e-4), t
    aims = model._aims(torch.randn(2, 3, model.llm.config.hidden_size), None)
    assert torch.allclose(aims[:, 0], torch.tanh(torch.tensor([0.3, 0.3])).expand(2, 2))


def test_the_oracle_aim_puts_the_prior_on_the_target_in_the_model_s_own_read():
    """query_source=oracle with model.aim: the Gaussian prior peaks on a patch the target covers (its
    true centre), so even an untrained model's fine read lands on the target; a random aim does not."""
    model, world = make(**{"world.task": "cue", "model.aim": True, "model.query_source": "oracle"})
    batch = world.batch("train", range(8))
    grid = world.cfg.frame_size // model.cfg.patch_size
    centres = model._box_centres(batch["boxes"])
    bias = model._aim_bias(centres, grid)[:, 1:]  # [B*T, grid^2]
    from fvlm.world import box_patch_mask

    covered = box_patch_mask(batch["boxes"], grid, world.cfg.frame_size).flatten(0, 1)  # [B*T, grid^2]
    peak = bias.argmax(-1)
    assert covered[torch.arange(len(peak)), peak].all()  # the prior's peak is on a patch the target covers
    with torch.no_grad():
        oracle = model(batch).stats
        model.cfg.query_source = "random"
        rand = model(batch).stats
    assert oracle["aim_error"] == pytest.approx(0.0, abs=1e-6) and rand["aim_error"] > 0.3
    # model.aim_sigma is live: a wider prior spreads the same aimed read (its bias is sigma^2-scaled)
    wide = model._aim_bias(centres, grid)
    model.cfg.aim_sigma *= 2
    assert torch.allclose(model._aim_bias(centres, grid), wide / 4)
    assert oracle["attn_on_target_fine"] > 2 * oracle["attn_on_target_chance_fine"]
    assert oracle["attn_on_target_fine"] > rand["attn_on_target_fine"] + 0.2


def test_aim_loss_adds_the_aim_error_to_the_objective_and_static_reads_with_q_static():
    model, world = _aimed(**{"model.aim_loss": 2.0, "model.lambda_coarse": 0.5})
    batch = world.batch("train", range(4))
    with torch.no_grad():
        out = model(batch)
        aims = model._aims(
            model._hidden(
                model._read(
                    model._coarse_cache(batch["frames"]),
                    model.q_static.expand(4 * 3, -1).view(4, 3, -1),
                    None,
                )[0]
            ),
            None,
        )
    err = (aims[:, 1:] - model._box_centres(batch["boxes"])[:, 1:]).pow(2).sum(-1).mean()
    assert torch.allclose(out.loss, out.loss_fine + 0.5 * out.loss_coarse + 2.0 * err, atol=1e-5)
    # static: every frame's fine read uses q_static, so with the same patches it equals the coarse read
    static, world = make(**{"model.query_source": "static"})
    with torch.no_grad():
        s = static(world.batch("train", range(4)), compute_coarse=True)
    assert torch.allclose(s.attn_fine, s.attn_coarse, atol=1e-6)
    assert torch.allclose(s.loss_fine, s.loss_coarse, atol=1e-5)
