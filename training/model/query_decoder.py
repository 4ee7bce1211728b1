"""The Mask2Former transformer decoder with OMG-Seg's heads (mmdet ``Mask2FormerTransformerDecoder``
inside the official ``Mask2FormerVideoHead``).

Each of the 9 layers: masked cross-attention to one memory level (cycling stride 32, 16, 8) ->
self-attention -> FFN, post-norm. A query may attend only where its previous mask prediction
(resized to the level) has sigmoid >= 0.5; a query whose mask would block every key attends to
all keys (Mask2Former's rule). Heads (mask, class, IoU) run on the post-normed queries before the
first layer and after every layer. At inference only the last head's outputs matter, so the
intermediate heads compute just the attention mask, and at the level's size: bilinear resizing
(no antialias) is a fixed linear map per channel, so resize(einsum(e, F)) = einsum(e, resize(F)),
and the mask features are resized once per level instead of every head's stride-4 mask (exact up
to float32 rounding; research/omg_seg.md section 6, item 3). Training (``all_layers``) needs every
head's stride-4 masks and classes, and keeps the straightforward order.

Prompts on images (``decode_prompts``, the runtime's prompt graph): a few queries against an
image's whole memory. Each cross-attention folds its key and value projections into the queries
(``MultiheadAttention.few_queries``), so a prompt does not pay for projecting the memory in every
layer (2 x C^2 multiply-adds per token and layer, nearly all of a prompt's cost before).

Video: a clip's T frames share one decoding. Memories join along the token axis (frame-major)
with the 3-D sine code; mask features are stacked along height, so each query predicts a tube.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels.reference import BLOCKED
from training.model.classifier import OpenVocabClassifier, text_logits
from training.model.position_encoding import sine_axis_codes, sine_encoding_3d


@dataclass
class QueryPredictions:
    """One prediction head's output for a batch of clips (T = 1 for images).

    class_logits: (B, Q, K + 1) void last; mask_logits: (B, Q, T, H/4, W/4);
    iou_logits: (B, Q); query_embeddings: (B, Q, C) the decoder queries before the final norm.
    """

    class_logits: torch.Tensor | None
    mask_logits: torch.Tensor
    iou_logits: torch.Tensor | None
    query_embeddings: torch.Tensor


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameter layout (packed q/k/v ``in_proj``) with the attention
    itself done by ``kernels.masked_attention`` (reference or Triton)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        c = x.shape[-1]
        w = self.in_proj_weight[index * c : (index + 1) * c]
        b = self.in_proj_bias[index * c : (index + 1) * c]
        y = F.linear(x, w, b)
        return y.unflatten(-1, (self.num_heads, c // self.num_heads)).transpose(
            1, 2
        )  # (B, M, L, d)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor | None,
    ) -> torch.Tensor:
        """query (B, Q, C), key/value (B, K, C), allowed (B, 1, Q, K) bool -> (B, Q, C)."""
        out = kernels.masked_attention(
            self._project(query, 0), self._project(key, 1), self._project(value, 2), allowed
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def few_queries(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        axis_codes: tuple[torch.Tensor, torch.Tensor],
        value_offset: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """``forward`` for a few queries over an image's memory, with the key and value
        projections folded into the queries instead of applied to every key.

        The keys are the memory tokens m_j + ``value_offset`` + the 3-D sine code of their
        position, the values m_j + ``value_offset``. Per head h the score
        (W_q q + b_q)_h . (W_k x_j + b_k)_h = f_h . x_j + a term constant over the keys (which the
        softmax drops), f_h = W_k,h^T (W_q q + b_q)_h; f_h . x_j = f_h . m_j + f_h[:C/2] . y[row]
        + f_h[C/2:] . x[col] + constants (the offset and an image's constant z code). And
        sum_j a_j (W_v v_j + b_v)_h = W_v,h (sum_j a_j v_j) + b_v,h, the weights summing to 1. A
        query costs 2 x heads x C multiply-adds per key instead of the 2 x C^2 of projecting
        every key, and the memory is read as it is (channel-major, no position code added): the
        same maths up to float32 rounding.

        Args:
            query: (B, Q, C) the query input (content + position).
            memory: (B, C, h, w) the memory tokens, without ``value_offset``.
            axis_codes: y (h, C/2) and x (w, C/2), the halves of the [y | x] position code.
            value_offset: (C,) added to every token (the level embedding).
            allowed: (B, 1, Q, h*w) bool, True = may attend (Mask2Former's empty-row rule).

        Returns:
            (B, Q, C).
        """
        b, q, c = query.shape
        m = self.num_heads
        d = c // m
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, _, b_v = self.in_proj_bias.chunk(3)
        heads = (F.linear(query, w_q, b_q) * (d**-0.5)).reshape(b, q, m, d).transpose(1, 2)
        folded = torch.matmul(heads, w_k.reshape(m, d, c)).reshape(b, m * q, c)  # f per head
        tokens = memory.flatten(2)  # (B, C, h*w)
        y_code, x_code = axis_codes
        half = c // 2
        position = (
            torch.matmul(folded[..., :half], y_code.transpose(0, 1))[..., :, None]
            + torch.matmul(folded[..., half:], x_code.transpose(0, 1))[..., None, :]
        )  # (B, M*Q, h, w)
        scores = (torch.matmul(folded, tokens) + position.flatten(2)).reshape(b, m, q, -1)
        bias = torch.where(allowed, 0.0, BLOCKED)
        attn = torch.softmax(scores + (bias - bias.amax(dim=-1, keepdim=True)), dim=-1)
        pooled = torch.matmul(attn.reshape(b, m * q, -1), tokens.transpose(1, 2))  # (B, M*Q, C)
        pooled = (pooled + value_offset).reshape(b, m, q, c)
        out = torch.matmul(pooled, w_v.reshape(m, d, c).transpose(1, 2))  # (B, M, Q, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, q, c) + b_v)

    def value_only(self, value: torch.Tensor) -> torch.Tensor:
        """Attention where every query sees only itself: softmax of one key is 1, so the output
        is out_proj(v_proj(value)) exactly."""
        c = value.shape[-1]
        v = F.linear(value, self.in_proj_weight[2 * c :], self.in_proj_bias[2 * c :])
        return self.out_proj(v)


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each followed by LayerNorm."""

    def __init__(self, *, embed_dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = MultiheadAttention(embed_dim, num_heads)
        self.norm_cross = nn.LayerNorm(embed_dim)
        self.self_attn = MultiheadAttention(embed_dim, num_heads)
        self.norm_self = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.norm_ffn = nn.LayerNorm(embed_dim)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        allowed: torch.Tensor,
        prompt_mode: bool | torch.Tensor,
    ) -> torch.Tensor:
        cross = self.cross_attn(queries + query_pos, memory + memory_pos, memory, allowed)
        return self._after_cross(queries, cross, query_pos, prompt_mode)

    def prompts(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        axis_codes: tuple[torch.Tensor, torch.Tensor],
        level_embed: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """``forward`` of prompt queries on images, the cross-attention by
        ``MultiheadAttention.few_queries`` over the (B, C, h, w) memory."""
        cross = self.cross_attn.few_queries(
            queries + query_pos, memory, axis_codes, level_embed, allowed
        )
        return self._after_cross(queries, cross, query_pos, True)

    def _after_cross(
        self,
        queries: torch.Tensor,
        cross: torch.Tensor,
        query_pos: torch.Tensor,
        prompt_mode: bool | torch.Tensor,
    ) -> torch.Tensor:
        queries = self.norm_cross(queries + cross)
        if isinstance(prompt_mode, torch.Tensor):
            # graph form: prompt queries see only themselves (the official diagonal mask)
            # arange == arange, not torch.eye: ONNX EyeLike has no bool kernel in ONNX Runtime
            index = torch.arange(queries.shape[1], device=queries.device)
            eye = index[:, None] == index[None, :]
            self_allowed = (eye | ~prompt_mode.to(torch.bool))[None, None]
            q = queries + query_pos
            update = self.self_attn(q, q, queries, self_allowed)
        elif prompt_mode:  # softmax over a single key is 1: exactly out_proj(v_proj(q))
            update = self.self_attn.value_only(queries)
        else:
            q = queries + query_pos
            update = self.self_attn(q, q, queries, None)
        queries = self.norm_self(queries + update)
        return self.norm_ffn(queries + self.fc2(F.relu(self.fc1(queries))))


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Mask2FormerQueryDecoder(nn.Module):
    """Queries attend to the pixel decoder's memories and predict masks, classes and IoU.

    Args:
        embed_dim: width (256); num_layers: 9; num_heads: 8; ffn_dim: 2048;
        num_queries: learned semantic queries (300); num_levels: memory levels (3);
        clip_dim: text bank dimension (768 for ConvNeXt-L); logit_scale_log: 4.6052.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        num_queries: int,
        clip_dim: int,
        logit_scale_log: float,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_levels = embed_dim, num_levels
        self.layers = nn.ModuleList(
            DecoderLayer(embed_dim=embed_dim, num_heads=num_heads, ffn_dim=ffn_dim)
            for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dim)
        self.query_feat = nn.Embedding(num_queries, embed_dim)
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.level_embed = nn.Embedding(num_levels, embed_dim)
        self.mask_embed = _mlp([embed_dim] * 4)
        self.iou_embed = _mlp([embed_dim] * 3 + [1])
        self.classifier = OpenVocabClassifier(embed_dim=embed_dim, clip_dim=clip_dim)
        # float32 exp as the official buffer computes it
        self.register_buffer("logit_scale", torch.tensor(logit_scale_log).exp(), persistent=False)

    def forward(
        self,
        memories: list[torch.Tensor],
        mask_features: torch.Tensor,
        class_bank: torch.Tensor,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        *,
        prompt_mode: bool | torch.Tensor = False,
        all_layers: bool = False,
    ) -> list[QueryPredictions]:
        """
        Args:
            memories: three (B*T, C, h_l, w_l) maps, strides 32, 16, 8.
            mask_features: (B*T, C, H, W) stride-4 features.
            class_bank: (K, S, D) unit-norm text embeddings.
            queries, query_pos: (B, Q, C) query content and position (the learned queries, or
                prompt queries from the prompt encoder). T = frames / B.
            prompt_mode: prompt queries do not see each other in self-attention (a bool, or a
                bool scalar tensor in exported graphs).
            all_layers: return every head's predictions with classes (training); otherwise only
                the last one.

        Returns:
            predictions, one per head call (initial + every layer) or just the last.
        """
        b = queries.shape[0]
        bt, c = mask_features.shape[:2]
        t = bt // b
        # (B*T, C, H, W) -> (B, C, T*H, W): frames stacked along height. Reshapes, not
        # ``unflatten``, wherever a size is data-dependent: the ONNX tracer loses the dynamic
        # shapes of an ``unflatten`` output (its later ``.shape`` reads become constants).
        stacked = _stack_frames(mask_features, b)
        keys, key_pos, sizes = [], [], []
        for i, memory in enumerate(memories):
            h, w = memory.shape[-2:]
            # (B*T, C, h, w) -> (B, T*h*w, C), frame-major
            tokens = memory.flatten(2).transpose(1, 2).reshape(b, -1, c)
            keys.append(tokens + self.level_embed.weight[i])
            key_pos.append(sine_encoding_3d(t, h, w, c // 2, memory.device)[None])
            sizes.append((h, w))

        if all_layers:  # training: every head in full, attention masks from the stride-4 masks
            outputs = [self._predict(queries, stacked, class_bank, t)]
            for i, layer in enumerate(self.layers):
                level = i % self.num_levels
                allowed = self._attention_mask(outputs[-1].mask_logits, sizes[level])
                queries = layer(
                    queries, query_pos, keys[level], key_pos[level], allowed, prompt_mode
                )
                outputs.append(self._predict(queries, stacked, class_bank, t))
            return outputs

        # inference: the mask features at each level's size, once; (B, C, T*h, w) each
        level_features = [
            _stack_frames(
                F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False), b
            )
            for size in sizes
        ]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            allowed = self._level_attention_mask(
                self.mask_embed(self.post_norm(queries)), level_features[level]
            )
            queries = layer(queries, query_pos, keys[level], key_pos[level], allowed, prompt_mode)
        return [self._predict(queries, stacked, class_bank, t)]

    def decode_prompts(
        self,
        memories: list[torch.Tensor],
        mask_features: torch.Tensor,
        class_bank: torch.Tensor,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> QueryPredictions:
        """``forward(..., prompt_mode=True)[-1]`` for a few prompt queries on B images (T = 1):
        the cross-attention folds its key and value projections into the queries
        (``MultiheadAttention.few_queries``), so a prompt costs 2 x heads x C multiply-adds per
        memory token instead of the 2 x C^2 of projecting an image's whole memory in every
        layer, and no (tokens, C) copy of the memory is made. The same maths up to float32
        rounding; the official goldens hold it through the runtime's prompt graph.

        Args:
            memories, mask_features: of B images, (B, C, h_l, w_l) and (B, C, H, W).
            class_bank, queries, query_pos: as ``forward``.
        """
        if not torch.jit.is_tracing() and mask_features.shape[0] != queries.shape[0]:
            raise ValueError(
                f"decode_prompts: one image per batch row, got {mask_features.shape[0]} maps "
                f"for {queries.shape[0]} rows"
            )
        c = mask_features.shape[1]
        codes = [sine_axis_codes(*m.shape[-2:], c // 2, m.device) for m in memories]
        # the mask features at each level's size, once (as ``forward``)
        level_features = [
            F.interpolate(mask_features, size=m.shape[-2:], mode="bilinear", align_corners=False)
            for m in memories
        ]
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            allowed = self._level_attention_mask(
                self.mask_embed(self.post_norm(queries)), level_features[level]
            )
            queries = layer.prompts(
                queries, query_pos, memories[level], codes[level],
                self.level_embed.weight[level], allowed,
            )
        return self._predict(queries, mask_features, class_bank, 1)

    @torch.no_grad()
    def init_position_attention(self, gain: float) -> None:
        """Start every cross-attention looking where its query's position code points.

        A from-scratch init for training (the official code starts from Xavier and learns
        this over its long schedule; loading a checkpoint overwrites it). Each head's query and
        key projections become the same selection of the key sine code's fastest y and x
        channels, times ``gain``: a query whose position code is a point's [y | x] code (a
        prompt through ``BoxPromptEncoder.init_position_identity``) then scores each key by
        the sum of cos(ω Δy) + cos(ω Δx) over those frequencies, highest at the point. Values
        and outputs keep their init; everything stays trainable.

        Measured on the ``synthetic-tiny`` recipe (then with 3 decoder layers): one-click mIoU
        0.155 with Xavier, 0.68 with gain 2 after the same 6000 steps (``training/EXPERIMENTS.md``).
        """
        c = self.embed_dim
        half = c // 2  # the key code is [y (half) | x (half)]
        for layer in self.layers:
            attn = layer.cross_attn
            d = c // attn.num_heads
            selection = torch.zeros(c, c)
            for head in range(attn.num_heads):
                for j in range(d // 2):
                    selection[head * d + j, j] = gain  # y channel j
                    selection[head * d + d // 2 + j, half + j] = gain  # x channel j
            attn.in_proj_weight[: 2 * c] = selection.repeat(2, 1).to(attn.in_proj_weight)

    def learned_queries(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The 300 learned semantic queries: (content, position), each (B, Q, C)."""
        return (
            self.query_feat.weight[None].expand(batch_size, -1, -1),
            self.query_embed.weight[None].expand(batch_size, -1, -1),
        )

    def _predict(
        self,
        queries: torch.Tensor,
        stacked_features: torch.Tensor,
        class_bank: torch.Tensor,
        num_frames: int,
    ) -> QueryPredictions:
        """One full prediction head: stride-4 masks, classes, IoU."""
        normed = self.post_norm(queries)
        mask_logits = mask_products(self.mask_embed(normed), stacked_features)
        embeddings = self.classifier(normed, stacked_features, mask_logits)
        return QueryPredictions(
            class_logits=text_logits(embeddings, class_bank, self.logit_scale),
            mask_logits=mask_logits.reshape(
                mask_logits.shape[0], mask_logits.shape[1], num_frames, -1, mask_logits.shape[3]
            ),
            iou_logits=self.iou_embed(normed)[..., 0],
            query_embeddings=queries,
        )

    @staticmethod
    def _attention_mask(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, Q, T, H, W) mask logits -> (B, 1, Q, T*h*w) bool, True = may attend.

        Each frame is resized to the level's (h, w), bilinear, align_corners=False; a key is
        blocked where sigmoid(logit) < 0.5 (the official test, kept literally for parity)."""
        b, q, t = mask_logits.shape[:3]
        resized = F.interpolate(
            mask_logits.flatten(1, 2), size=size, mode="bilinear", align_corners=False
        )  # (B, Q*T, h, w)
        allowed = resized.sigmoid() >= 0.5
        return allowed.view(b, q, -1)[:, None].detach()

    @staticmethod
    def _level_attention_mask(
        mask_embeddings: torch.Tensor, level_features: torch.Tensor
    ) -> torch.Tensor:
        """The same mask as ``_attention_mask`` of the stride-4 logits, computed at the level.

        Args:
            mask_embeddings: (B, Q, C) ``mask_embed`` of the post-normed queries.
            level_features: (B, C, T*h, w) the mask features resized per frame to the level's
                (h, w), frames stacked along height.

        Returns:
            (B, 1, Q, T*h*w) bool, True = may attend (sigmoid(logit) >= 0.5, as the official).
        """
        logits = mask_products(mask_embeddings, level_features)
        allowed = logits.sigmoid() >= 0.5
        return allowed.flatten(2)[:, None].detach()


def mask_products(embeddings: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``einsum("bqc,bchw->bqhw")`` as one batched matrix product: (B, Q, C) x (B, C, H, W) ->
    (B, Q, H, W). Exported, it stays a MatMul (ONNX Runtime's Einsum kernel took 3x longer)."""
    products = torch.matmul(embeddings, features.flatten(2))
    # sizes read from the tensors (not unflatten's Python ints) stay dynamic when traced
    return products.view(products.shape[0], products.shape[1], features.shape[2], features.shape[3])


def _stack_frames(frames: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T*H, W): a clip's frames stacked along height."""
    bt, c, h, w = frames.shape
    return frames.reshape(batch_size, -1, c, h, w).transpose(1, 2).flatten(2, 3)
