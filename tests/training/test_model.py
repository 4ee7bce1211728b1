"""The PyTorch OMG-Seg model on the tiny preset: shapes, ranges, determinism, the masked-attention
rule and its low-resolution fast path, prompt independence, checkpoints and their errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from omg_rt.errors import CheckpointError
from omg_rt.spec import ModelSpec, PixelDecoderSpec
from tests.conftest import OFFICIAL_FIXTURES, TOLERANCES, seeded_tiny
from training.model import build_model
from training.model.checkpoint import load_checkpoint, remap_official_keys, save_checkpoint
from training.model.classifier import text_logits
from training.model.position_encoding import sine_encoding_3d
from training.model.query_decoder import (
    Mask2FormerQueryDecoder,
    QueryPredictions,
    _stack_frames,
)
from training.presets import PRESETS, get_preset


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def tiny():
    return seeded_tiny(0)


def _bank(k: int = 6, s: int = 2, d: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(k, s, d, generator=g), dim=-1)


def _images(n: int, h: int = 64, w: int = 96, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name):
    spec = get_preset(name)
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_invalid_spec_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="num_groups"):
        ModelSpec(pixel_decoder=PixelDecoderSpec(embed_dim=256, num_groups=30))
    with pytest.raises(ValueError, match="unknown fields"):
        ModelSpec.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")


def test_image_outputs_have_the_documented_shapes_and_ranges(tiny):
    images, bank = _images(2), _bank()
    features = tiny.encode(images)
    assert [f.shape[-1] for f in features] == [24, 12, 6, 3]
    mask_features, memories = tiny.decode_pixels(features)
    assert mask_features.shape == (2, 64, 16, 24)
    assert [m.shape[-2:] for m in memories] == [(2, 3), (4, 6), (8, 12)]
    out = tiny.decode_queries(memories, mask_features, bank, *tiny.learned_queries(2))[-1]
    q = tiny.config.query_decoder.num_queries
    assert out.class_logits.shape == (2, q, 7)
    assert out.mask_logits.shape == (2, q, 1, 16, 24)
    assert out.iou_logits.shape == (2, q)
    assert torch.all(out.class_logits[..., -1] == 0), "void is a zero embedding: logit exactly 0"
    scale = tiny.query_decoder.logit_scale
    assert out.class_logits.abs().max() <= scale * (1 + 1e-5), (
        "cosine logits are bounded by the scale"
    )
    assert torch.isfinite(out.mask_logits).all()


def test_same_input_gives_the_same_output(tiny):
    a = tiny(_images(1), _bank())[-1]
    b = tiny(_images(1), _bank())[-1]
    assert torch.equal(a.class_logits, b.class_logits) and torch.equal(a.mask_logits, b.mask_logits)


def test_batch_items_are_independent(tiny):
    images = _images(2)
    both = tiny(images, _bank())[-1]
    one = tiny(images[1:], _bank())[-1]
    torch.testing.assert_close(both.mask_logits[1:], one.mask_logits, rtol=1e-4, atol=1e-4)


def test_video_clip_predicts_one_tube_per_query(tiny):
    out = tiny(_images(6), _bank(), num_frames=3)[-1]
    q = tiny.config.query_decoder.num_queries
    assert out.mask_logits.shape == (2, q, 3, 16, 24)
    assert out.class_logits.shape == (2, q, 7)
    # frames of a clip are decoded jointly: changing frame 2 changes frame 0's tube masks
    images = _images(6)
    changed = images.clone()
    changed[2] += 1.0
    a = tiny(images, _bank(), num_frames=3)[-1]
    b = tiny(changed, _bank(), num_frames=3)[-1]
    assert not torch.allclose(a.mask_logits[0, :, 0], b.mask_logits[0, :, 0])
    torch.testing.assert_close(a.mask_logits[1], b.mask_logits[1])  # the other clip is untouched


def test_all_layers_gives_a_prediction_per_head_call(tiny):
    outs = tiny(_images(1), _bank(), all_layers=True)
    assert len(outs) == tiny.config.query_decoder.num_layers + 1
    assert all(o.class_logits is not None and o.iou_logits is not None for o in outs)


def test_fully_masked_query_attends_to_every_key():
    # A mask that blocks every key for one query must behave as no mask for that query.
    mask_logits = torch.full((1, 2, 1, 8, 8), -5.0)
    mask_logits[0, 1, 0, :4] = 5.0  # query 1 sees the top half only
    allowed = Mask2FormerQueryDecoder._attention_mask(mask_logits, (4, 4))
    assert not allowed[0, 0, 0].any() and allowed[0, 0, 1].any()
    import kernels

    q = torch.randn(1, 2, 2, 8)
    k = torch.randn(1, 2, 16, 8)
    v = torch.randn(1, 2, 16, 8)
    out = kernels.masked_attention(q, k, v, allowed, impl="reference")
    plain = kernels.masked_attention(q, k, v, None, impl="reference")
    torch.testing.assert_close(out[:, :, 0], plain[:, :, 0])
    assert not torch.allclose(out[:, :, 1], plain[:, :, 1])


def _plain_decode(
    decoder: Mask2FormerQueryDecoder,
    memories: list[torch.Tensor],
    mask_features: torch.Tensor,
    class_bank: torch.Tensor,
    queries: torch.Tensor,
    query_pos: torch.Tensor,
) -> tuple[list[QueryPredictions], list[torch.Tensor]]:
    """The straightforward Mask2Former loop (the official order): every head computes the full
    stride-4 masks, and each layer's attention mask is the previous head's masks resized per frame
    to the level, then sigmoid >= 0.5. Returns every head's predictions and every attention mask
    (B, 1, Q, T*h*w) bool."""
    b, q = queries.shape[:2]
    bt, c, h4, w4 = mask_features.shape
    t = bt // b
    stacked = mask_features.reshape(b, t, c, h4, w4).transpose(1, 2).flatten(2, 3)  # (B,C,T*H,W)

    def head(queries: torch.Tensor) -> QueryPredictions:
        normed = decoder.post_norm(queries)
        masks = torch.einsum("bqc,bchw->bqhw", decoder.mask_embed(normed), stacked)
        embeddings = decoder.classifier(normed, stacked, masks)
        return QueryPredictions(
            class_logits=text_logits(embeddings, class_bank, decoder.logit_scale),
            mask_logits=masks.reshape(b, q, t, h4, w4),
            iou_logits=decoder.iou_embed(normed)[..., 0],
            query_embeddings=queries,
        )

    heads, masks_used = [head(queries)], []
    for i, layer in enumerate(decoder.layers):
        level = i % len(memories)
        h, w = memories[level].shape[-2:]
        keys = memories[level].flatten(2).transpose(1, 2).reshape(b, -1, c)  # (B, T*h*w, C)
        keys = keys + decoder.level_embed.weight[level]
        key_pos = sine_encoding_3d(t, h, w, c // 2)[None]
        resized = F.interpolate(  # (B, Q*T, h, w): each frame resized on its own
            heads[-1].mask_logits.flatten(1, 2), size=(h, w), mode="bilinear", align_corners=False
        )
        allowed = (resized.sigmoid() >= 0.5).reshape(b, q, -1)[:, None]
        masks_used.append(allowed)
        queries = layer(queries, query_pos, keys, key_pos, allowed, False)
        heads.append(head(queries))
    return heads, masks_used


# (B, T, stride-4 (H, W), level (h, w)): integer ratios, non-integer ones that upsample,
# 1 x 1 and 3 x 3 levels, clips of 1, 2 and 3 frames
LEVEL_CASES = [
    (2, 1, (40, 56), (5, 7)),
    (1, 2, (24, 24), (3, 3)),
    (1, 3, (8, 8), (1, 1)),
    (1, 3, (40, 56), (10, 14)),
    (2, 2, (13, 5), (5, 7)),
    (1, 3, (4, 6), (7, 3)),
]


@pytest.mark.parametrize(("b", "t", "hw4", "level"), LEVEL_CASES)
def test_attention_mask_at_the_level_equals_resizing_the_stride4_mask(b, t, hw4, level):
    # resize(einsum(e, F)) == einsum(e, resize(F)): the fast path's logits equal the resized
    # stride-4 logits up to float32 rounding, and its mask is the official one wherever a logit
    # is not within that rounding of 0.
    g = torch.Generator().manual_seed(sum(hw4) + t)
    c, q = 48, 40
    mask_features = torch.randn(b * t, c, *hw4, generator=g)
    embeddings = torch.randn(b, q, c, generator=g)
    full = torch.einsum("bqc,bchw->bqhw", embeddings, _stack_frames(mask_features, b))
    full = full.reshape(b, q, t, *hw4)  # (B, Q, T, H, W)
    expected = Mask2FormerQueryDecoder._attention_mask(full, level)
    expected_logits = F.interpolate(
        full.flatten(1, 2), size=level, mode="bilinear", align_corners=False
    ).reshape(b, q, -1)

    level_features = _stack_frames(
        F.interpolate(mask_features, size=level, mode="bilinear", align_corners=False), b
    )
    allowed = Mask2FormerQueryDecoder._level_attention_mask(embeddings, level_features)
    logits = torch.einsum("bqc,bchw->bqhw", embeddings, level_features).flatten(2)

    assert allowed.shape == expected.shape == (b, 1, q, t * level[0] * level[1])
    noise = 1e-5 * expected_logits.abs().max()  # float32 rounding of a 48-term sum, generously
    assert (logits - expected_logits).abs().max() <= noise
    decided = (expected_logits.abs() > noise)[:, None]
    assert decided.float().mean() >= 0.99, "almost every key must be decided for a real check"
    mismatched = (allowed != expected) & decided
    assert not mismatched.any(), f"{int(mismatched.sum())} keys differ, first at " + str(
        mismatched.nonzero()[:5].tolist()
    )
    assert expected.any() and not expected.all(), "a mask that blocks some keys and not others"


# (B, T, stride-4 (H, W), levels s32, s16, s8). The last case upsamples along the stacked
# height, the one place where resizing a whole clip would differ from resizing each frame.
DECODER_CASES = [
    (1, 1, (40, 56), [(5, 7), (10, 14), (20, 28)]),
    (2, 1, (24, 24), [(3, 3), (6, 6), (12, 12)]),
    (1, 2, (8, 8), [(1, 1), (2, 2), (4, 4)]),
    (1, 3, (20, 12), [(3, 3), (5, 7), (10, 6)]),
    (1, 3, (4, 12), [(3, 3), (5, 7), (10, 6)]),
]


@pytest.fixture(scope="module")
def six_layer_decoder():
    # two rounds of the three levels, so every level is attended after a masked layer
    torch.manual_seed(3)
    decoder = Mask2FormerQueryDecoder(
        embed_dim=32, num_layers=6, num_heads=4, ffn_dim=64, num_queries=12, clip_dim=16,
        logit_scale_log=4.6052,
    )
    return decoder.eval()


@pytest.mark.parametrize(("b", "t", "hw4", "levels"), DECODER_CASES)
def test_inference_decoding_equals_the_plain_loop_and_training_is_unchanged(
    six_layer_decoder, b, t, hw4, levels
):
    decoder = six_layer_decoder
    g = torch.Generator().manual_seed(b * 10 + t)
    c = decoder.embed_dim
    mask_features = torch.randn(b * t, c, *hw4, generator=g)
    memories = [torch.randn(b * t, c, *hw, generator=g) for hw in levels]
    bank = F.normalize(torch.randn(5, 2, 16, generator=g), dim=-1)
    queries = decoder.learned_queries(b)
    plain, masks_used = _plain_decode(decoder, memories, mask_features, bank, *queries)
    # the attention masks must matter: in most layers some query sees some keys and not others
    # (a row blocked everywhere attends everywhere, so it does not count)
    restricting = [bool((m.any(-1) & ~m.all(-1)).any()) for m in masks_used]
    assert sum(restricting) >= len(restricting) // 2, restricting

    # inference (intermediate masks at the levels' sizes): the last head within float32
    # tolerance (bitwise equal in practice: outputs see the masks only as booleans)
    (fast,) = decoder(memories, mask_features, bank, *queries)
    last = plain[-1]
    for name in ("class_logits", "mask_logits", "iou_logits", "query_embeddings"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(last, name), **TOLERANCES["float32"], msg=name
        )

    # training (all_layers): every head, bit for bit the straightforward loop
    heads = decoder(memories, mask_features, bank, *queries, all_layers=True)
    assert len(heads) == len(plain) == len(decoder.layers) + 1
    for i, (ours, ref) in enumerate(zip(heads, plain)):
        for name in ("class_logits", "mask_logits", "iou_logits", "query_embeddings"):
            assert torch.equal(getattr(ours, name), getattr(ref, name)), (i, name)


@pytest.mark.parametrize("preset", ["synthetic-tiny", "tiny"])
def test_position_init_points_every_prompt_head_at_its_box(preset):
    # From-scratch init: a prompt's cross-attention (position terms alone) peaks at the key
    # whose sine code is the box centre's, in every head of every layer and on every level.
    from training.model.position_encoding import sine_encoding_3d

    torch.manual_seed(0)
    model = build_model(preset, with_text_encoder=False)
    model.query_decoder.init_position_attention(2.0)
    model.prompt_encoder.init_position_identity()
    c = model.query_decoder.embed_dim
    for layer in model.query_decoder.layers:
        attn = layer.cross_attn
        for h, w in ((2, 3), (4, 4), (8, 8)):
            cells = [(i, j) for i in range(h) for j in range(w)]
            # key (i, j) sits at ((j + 1) / w, (i + 1) / h) of a 64 x 96 image (mmdet's code)
            boxes = torch.tensor([[96 * (j + 1) / w - 3, 64 * (i + 1) / h - 3,
                                   96 * (j + 1) / w + 3, 64 * (i + 1) / h + 3]
                                  for i, j in cells])
            _, pos = model.prompt_encoder(boxes[None], torch.tensor([64.0, 96.0]))
            keys = sine_encoding_3d(1, h, w, c // 2)[None]
            logits = attn._project(pos, 0) @ attn._project(keys, 1).transpose(-1, -2)
            best = logits[0].argmax(-1)  # (heads, cells)
            expected = torch.arange(len(cells)).expand_as(best)
            assert torch.equal(best, expected), (preset, h, w)


def test_prompt_results_do_not_depend_on_other_prompts(tiny):
    images, bank = _images(1), _bank()
    size = torch.tensor([64.0, 96.0])
    boxes = torch.tensor(
        [[[4.0, 4.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0], [20.0, 20.0, 26.0, 26.0]]]
    )
    mask_features, memories = tiny.decode_pixels(tiny.encode(images))

    def decode(b):
        queries = tiny.encode_prompts(b, size)
        return tiny.decode_queries(memories, mask_features, bank, *queries, prompt_mode=True)[-1]

    together = decode(boxes)
    for i in range(3):
        alone = decode(boxes[:, i : i + 1])
        torch.testing.assert_close(
            together.mask_logits[:, i : i + 1], alone.mask_logits, rtol=1e-5, atol=1e-5
        )
    # ... and a prompt's result does depend on where it is
    assert not torch.allclose(together.mask_logits[0, 0], together.mask_logits[0, 1])


@pytest.mark.parametrize("hw", [(64, 96), (96, 64)])
def test_decode_prompts_equals_the_decoder_in_prompt_mode(tiny, hw):
    # the prompt graph's few-query form (key / value projections folded into the queries, no
    # position code added to the memory) against the decoder's own prompt path, two images at once
    images = _images(2, *hw, seed=5)
    bank = _bank()
    mask_features, memories = tiny.decode_pixels(tiny.encode(images))
    g = torch.Generator().manual_seed(3)
    boxes = torch.rand(2, 4, 2, 2, generator=g).sort(dim=2).values * torch.tensor(hw[::-1])
    boxes = boxes.transpose(2, 3).reshape(2, 4, 4)
    queries = tiny.encode_prompts(boxes, torch.tensor([float(v) for v in hw]))
    folded = tiny.decode_prompts(memories, mask_features, bank, *queries)
    for i in range(2):
        one = [m[i : i + 1] for m in memories]
        ref = tiny.decode_queries(
            one, mask_features[i : i + 1], bank, *(q[i : i + 1] for q in queries),
            prompt_mode=True,
        )[-1]
        for name in ("class_logits", "mask_logits", "iou_logits", "query_embeddings"):
            got, want = getattr(folded, name)[i : i + 1], getattr(ref, name)
            assert got.shape == want.shape, name
            scale = want.abs().max().item()
            assert (got - want).abs().max().item() <= 1e-5 * max(1.0, scale), name
    with pytest.raises(ValueError, match="one image per batch row"):
        tiny.decode_prompts(memories, mask_features, bank, *(q[:1] for q in queries))


def test_few_query_attention_equals_the_projected_form():
    # MultiheadAttention.few_queries against forward on explicit keys and values (position code,
    # level offset), with rows that block every key, allow one key, or allow all
    from training.model.position_encoding import sine_axis_codes
    from training.model.query_decoder import MultiheadAttention

    torch.manual_seed(4)
    attn = MultiheadAttention(64, 4)
    torch.nn.init.normal_(attn.in_proj_bias, std=0.5)
    b, q, h, w = 2, 3, 5, 7
    query, memory = torch.randn(b, q, 64), torch.randn(b, 64, h, w)
    offset = torch.randn(64)
    y, x = sine_axis_codes(h, w, 32)
    allowed = torch.rand(b, 1, q, h * w) > 0.5
    allowed[0, 0, 0] = False
    allowed[1, 0, 1] = False
    allowed[1, 0, 1, 3] = True
    allowed[1, 0, 2] = True
    z = torch.randn(64)  # a position term constant over the keys (an image's z code)
    position = torch.cat((y[:, None].expand(h, w, 32), x[None].expand(h, w, 32)), -1) + z
    values = memory.flatten(2).transpose(1, 2) + offset
    want = attn(query, values + position.reshape(h * w, 64), values, allowed)
    got = attn.few_queries(query, memory, (y, x), offset, allowed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_prompts_need_the_image_size(tiny):
    with pytest.raises(ValueError, match="image_size"):
        tiny(_images(1), _bank(), prompt_boxes=torch.zeros(1, 1, 4))


def test_graph_form_of_prompt_isolation_equals_the_shortcut(tiny):
    # Exported graphs take prompt_mode as a tensor and mask self-attention to the diagonal;
    # that must equal the eager shortcut (softmax over one key is exactly 1).
    mask_features, memories = tiny.decode_pixels(tiny.encode(_images(1)))
    boxes = torch.tensor([[[4.0, 4.0, 40.0, 30.0], [50.0, 10.0, 90.0, 60.0]]])
    queries = tiny.encode_prompts(boxes, torch.tensor([64.0, 96.0]))
    eager = tiny.decode_queries(memories, mask_features, _bank(), *queries, prompt_mode=True)[-1]
    graph = tiny.decode_queries(
        memories, mask_features, _bank(), *queries, prompt_mode=torch.tensor(True)
    )[-1]
    torch.testing.assert_close(graph.mask_logits, eager.mask_logits, rtol=1e-5, atol=1e-5)
    learned = tiny.decode_queries(
        memories, mask_features, _bank(), *tiny.learned_queries(1), prompt_mode=torch.tensor(False)
    )[-1]
    plain = tiny.decode_queries(memories, mask_features, _bank(), *tiny.learned_queries(1))[-1]
    torch.testing.assert_close(learned.mask_logits, plain.mask_logits, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_keeps_every_weight_and_output(tiny, tmp_path):
    save_checkpoint(tiny, tmp_path / "run")
    loaded, spec = load_checkpoint(tmp_path / "run")
    assert spec == tiny.config
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    a = tiny(_images(1), _bank())[-1]
    b = loaded(_images(1), _bank())[-1]
    assert torch.equal(a.mask_logits, b.mask_logits)


def test_bad_checkpoints_raise_checkpoint_error_naming_the_problem(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    save_checkpoint(tiny, tmp_path / "run")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    weights.pop("query_decoder.query_feat.weight")
    weights["query_decoder.bogus"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "run" / "checkpoint.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"missing 1: query_decoder.query_feat.weight.*"
        r"unexpected 1: query_decoder.bogus",
    ):
        load_checkpoint(tmp_path / "run")
    torch.save({"some.key": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="panoptic_head"):
        load_checkpoint(tmp_path / "other.pth")
    (tmp_path / "pickle.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(tmp_path / "pickle.pth")


def test_official_key_map_places_every_tensor_and_rejects_strays():
    layout = json.loads((OFFICIAL_FIXTURES / "official_omg_seg_convl_keys.json").read_text())
    names = list(layout["decoder"]) + list(layout["backbone_if_wrapped"])
    # distinct values so a swapped mapping cannot pass
    state = {k: torch.full((1,), float(i)) for i, k in enumerate(names)}
    mapped = remap_official_keys(state)
    model = build_model("omg-convl", with_text_encoder=False)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    for key in names:
        assert key in layout["decoder"] or key in layout["backbone_if_wrapped"]
    shapes = {**layout["decoder"], **layout["backbone_if_wrapped"]}
    index = {float(i): k for i, k in enumerate(names)}
    for new_key, value in mapped.items():
        assert tuple(ours[new_key].shape) == tuple(shapes[index[float(value)]]), new_key
    expect = {
        "panoptic_head.pixel_decoder.encoder.layers.3.ffn.layers.0.0.weight": "pixel_decoder.encoder.3.ffn.fc1.weight",
        "panoptic_head.transformer_decoder.layers.7.norms.1.bias": "query_decoder.layers.7.norm_self.bias",
        "panoptic_head.transformer_decoder.layers.0.cross_attn.attn.in_proj_weight": "query_decoder.layers.0.cross_attn.in_proj_weight",
        "panoptic_head.cls_proj.4.weight": "query_decoder.classifier.cls_proj.4.weight",
        "panoptic_head.pb_embedding.weight": "prompt_encoder.pb_embedding.weight",
        "backbone.layer3.blocks.26.mlp.fc2.weight": "backbone.trunk.stages.2.blocks.26.mlp.fc2.weight",
        "backbone.head.1.mlp.fc1.weight": "backbone.head.mlp.fc1.weight",
        "backbone.head.0.norm.weight": "backbone.trunk.head.norm.weight",
    }
    for old, new in expect.items():
        assert float(mapped[new]) == float(state[old]), (old, new)
    with pytest.raises(CheckpointError, match="panoptic_head.stray"):
        remap_official_keys({"panoptic_head.stray.weight": torch.zeros(1)})
