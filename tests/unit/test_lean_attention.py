"""The lean loop's prompt-chunk attention computes what torch's scaled_dot_product_attention does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.generation.lean_llama import _chunk_attention


@pytest.mark.parametrize("heads,kv_heads,start,t", [(9, 3, 0, 64), (9, 3, 200, 37), (8, 8, 5, 1), (4, 1, 64, 64)])
def test_chunk_attention_matches_sdpa_with_grouped_heads_and_a_causal_offset(heads, kv_heads, start, t):
    torch.manual_seed(start + t)
    dim, end = 64, start + t
    q = torch.randn(t, heads, dim)
    keys, values = torch.randn(kv_heads, end, dim), torch.randn(kv_heads, end, dim)
    mask = (torch.arange(end)[None, :] <= torch.arange(start, end)[:, None])[None, None]
    expected = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask,
                                              enable_gqa=True)[0].transpose(0, 1)
    got = _chunk_attention(q, keys, values, mask)
    assert got.shape == (t, heads, dim)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
