"""The native int8 kernel against torch's and against exact arithmetic; choosing and refusing it."""

from __future__ import annotations

import logging

import pytest
import torch

from services.generation.engines.transformers import int8_kernel
from services.generation.engines.transformers.quantization import int8_op
from services.generation.errors import ModelUnavailable

ISA, WHY_NOT = int8_kernel.pick_isa()
needs_cpu = pytest.mark.skipif(ISA is None, reason=f"{WHY_NOT} (the kernel is refused there; "
                               "test_auto_falls_back... covers that path)")


def operands(m: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16)
    weight = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scales = (torch.rand(n, generator=g) * 0.02 + 1e-3).to(torch.bfloat16)
    return x, weight, scales


@pytest.fixture(scope="module")
def op():
    return int8_kernel.native("native")


@needs_cpu
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 64, 100])
@pytest.mark.parametrize(("n", "k"), [(1, 32), (7, 64), (130, 576), (577, 1536)])
def test_native_kernel_computes_what_torchs_does(op, m, n, k):
    x, weight, scales = operands(m, n, k, seed=m * 1000 + n)
    got = int8_kernel.matmul(x, weight, scales, op).float()
    exact = x.double() @ (weight.double() * scales.double()[:, None]).T
    torchs = torch._weight_int8pack_mm(x, weight, scales).float()
    assert got.shape == (m, n) and got.dtype == torch.float32
    # Both round the float32 sum to bf16 once: within bf16's half-ulp of the exact result (2^-8 relative).
    bound = exact.abs().max().item() * 2 ** -7
    assert (got.double() - exact).abs().max().item() <= bound
    assert (torchs.double() - exact).abs().max().item() <= bound
    if k % int8_kernel.STEP == 0:  # the decode layout: the same sums in the same order, so the same bits
        tiled, padded = int8_kernel.tile_rows(weight, scales)
        assert tiled.shape == (n + -n % 4, k) and padded.shape == (n + -n % 4,)
        assert torch.equal(int8_kernel.matmul_tiled(x, tiled, padded, n), got.bfloat16())


@needs_cpu
@pytest.mark.parametrize("m", [2, 7, 8, 9, 64])
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(op, m):
    """Each row accumulates in the same order whatever the batch (a decode step's rows widen in
    registers, a prompt chunk's from a buffer): a row batched or prefilled gives its bits alone,
    in the row-major layout and in the tiled one."""
    x, weight, scales = operands(m, 301, 576, seed=7)
    batched = int8_kernel.matmul(x, weight, scales, op)
    tiled, padded = int8_kernel.tile_rows(weight, scales)
    batched_tiled = int8_kernel.matmul_tiled(x, tiled, padded, 301)
    for row in range(m):
        assert torch.equal(int8_kernel.matmul(x[row:row + 1], weight, scales, op)[0], batched[row])
        assert torch.equal(int8_kernel.matmul_tiled(x[row:row + 1], tiled, padded, 301)[0], batched_tiled[row])


def test_the_tiled_layout_puts_four_rows_blocks_side_by_side():
    """Group g's block b holds rows 4g..4g+3's values 32b..32b+31, one row after the other."""
    weight = torch.arange(8 * 64, dtype=torch.int32).remainder(251).sub(125).to(torch.int8).view(8, 64)
    tiled, scales = int8_kernel.tile_rows(weight, torch.ones(8, dtype=torch.bfloat16))
    flat = tiled.flatten()
    for n in range(8):
        for k in range(64):
            assert flat[(n // 4) * 4 * 64 + (k // 32) * 128 + (n % 4) * 32 + k % 32] == weight[n, k]
    with pytest.raises(ValueError, match="multiple of 32"):
        int8_kernel.tile_rows(torch.zeros(4, 48, dtype=torch.int8), torch.ones(4, dtype=torch.bfloat16))


@needs_cpu
def test_the_tiled_kernel_refuses_rows_it_cannot_group(op):
    x, weight, scales = operands(1, 6, 64, seed=2)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        torch.ops.twin_int8.int8_bf16_mm_tiled(x, weight, scales)


@needs_cpu
def test_no_rows_give_an_empty_result(op):
    x, weight, scales = operands(0, 5, 64, seed=1)
    assert int8_kernel.matmul(x, weight, scales, op).shape == (0, 5)


@needs_cpu
def test_a_k_the_kernel_does_not_tile_goes_to_torchs_kernel(op):
    x, weight, scales = operands(4, 9, 48, seed=3)  # 48 is not a multiple of 32
    assert torch.equal(int8_kernel.matmul(x, weight, scales, op), torch._weight_int8pack_mm(x, weight, scales))


def test_torch_never_builds_it_and_unknown_values_are_refused():
    assert int8_kernel.native("torch") is None
    with pytest.raises(ModelUnavailable, match="unknown int8 kernel 'fast'.*TWIN_INT8_KERNEL"):
        int8_kernel.native("fast")


def test_auto_falls_back_saying_why_and_native_refuses_naming_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(int8_kernel, "_native", [None, "this CPU lacks avx512_bf16"])
    with caplog.at_level(logging.WARNING, logger=int8_kernel.__name__):
        assert int8_kernel.native("auto") is None
    assert "torch's kernel" in caplog.text and "avx512_bf16" in caplog.text
    with pytest.raises(ModelUnavailable, match="TWIN_INT8_KERNEL=native: this CPU lacks avx512_bf16.*auto or torch"):
        int8_kernel.native("native")


def test_a_kernel_named_for_weights_that_are_not_int8_is_refused_not_ignored():
    for quantization in ("none", "bf16"):
        assert int8_op(quantization, "auto") is None
        for kernel in ("native", "torch"):
            with pytest.raises(ModelUnavailable, match=f"TWIN_INT8_KERNEL={kernel} applies to int8 weights"):
                int8_op(quantization, kernel)
    assert int8_op("int8", "torch") is None


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw avx512vl avx512_bf16\n")
    assert int8_kernel.missing_cpu_flags(str(info)) == []
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert int8_kernel.missing_cpu_flags(str(info)) == ["avx512bw", "avx512vl", "avx512_bf16"]
    assert int8_kernel.missing_cpu_flags(str(tmp_path / "absent")) == list(int8_kernel.CPU_FLAGS)


def test_the_best_build_the_cpu_runs_is_picked_and_none_is_explained(tmp_path):
    """AVX-512 with BF16 first; AVX2 with FMA (AMD Zen 1-3, client Intel) next; else torch's kernel."""
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512vl avx512_bf16\n")
    assert int8_kernel.pick_isa(str(info)) == ("avx512-bf16", "")
    info.write_text("flags\t\t: fpu sse avx2 fma avx512f\n")
    assert int8_kernel.pick_isa(str(info)) == ("avx2", "")
    info.write_text("flags\t\t: fpu sse avx\n")
    isa, why = int8_kernel.pick_isa(str(info))
    assert isa is None and why == ("this CPU lacks avx512f, avx512bw, avx512vl, avx512_bf16 (AVX-512) and avx2, fma "
                                   "(AVX2)")
    assert "-mavx2" in int8_kernel.flags("avx2") and "-mavx512bf16" not in int8_kernel.flags("avx2")


def test_checkouts_of_the_same_kernel_share_one_build_and_another_source_gets_its_own(tmp_path):
    """ninja rebuilds when a source's path changes; a rebuild in place would swap the library under
    processes that loaded it. So the build folder follows the source's content, not its place."""
    root = tmp_path / "extensions"
    one, two = tmp_path / "one" / "k.cpp", tmp_path / "two" / "k.cpp"
    for path in (one, two):
        path.parent.mkdir()
        path.write_text("// the kernel\n")
    folder = int8_kernel.build_folder(root, (one,))
    assert int8_kernel.build_folder(root, (two,)) == folder
    assert int8_kernel.build_folder(root, (two,), "avx2") != folder  # another build of the same source
    assert (folder / "k.cpp").read_text() == "// the kernel\n"
    two.write_text("// another kernel\n")
    other = int8_kernel.build_folder(root, (two,))
    assert other != folder and (other / "k.cpp").read_text() == "// another kernel\n"
    assert (folder / "k.cpp").read_text() == "// the kernel\n"
    # the library is all its sources: another second source is another build
    extra = tmp_path / "one" / "ops.cpp"
    extra.write_text("// ops\n")
    assert int8_kernel.build_folder(root, (one, extra)) not in (folder, other)


def test_why_the_native_kernel_is_not_available_is_said(monkeypatch):
    monkeypatch.setattr(int8_kernel, "pick_isa", lambda: (None, "this CPU lacks avx2"))
    assert int8_kernel._build() == (None, "this CPU lacks avx2")
    monkeypatch.setattr(int8_kernel, "pick_isa", lambda: ("avx2", ""))
    monkeypatch.setattr(int8_kernel.shutil, "which", lambda name: None)
    assert int8_kernel._build() == (None, "no C++ compiler (install g++)")
    monkeypatch.setattr(int8_kernel.shutil, "which", lambda name: "/usr/bin/" + name)

    def broken(isa):
        raise RuntimeError("Error building extension 'twin_int8'\nninja: build stopped: subcommand failed.")

    monkeypatch.setattr(int8_kernel, "build", broken)
    op, why = int8_kernel._build()
    assert op is None and why == "building the native kernels failed: ninja: build stopped: subcommand failed."


def test_int8_on_a_gpu_is_refused_before_anything_is_compiled(monkeypatch):
    def no_build():
        raise AssertionError("the kernel was built for weights that would never use it")

    monkeypatch.setattr(int8_kernel, "_native", [])
    monkeypatch.setattr(int8_kernel, "_build", no_build)
    for kernel in ("auto", "native"):
        with pytest.raises(ModelUnavailable, match="int8 weight-only quantization is for CPU serving"):
            int8_op("int8", kernel, "cuda")


@needs_cpu
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fused_decode_operations_compute_what_the_lean_forwards_torch_code_does(op, batch):
    """decode_ops.cpp against lean_llama's torch code on random values: rotation + cache write +
    attention for rows of different lengths (rows past the batch and other positions untouched),
    RMSNorm with the residual add in place, SiLU-and-multiply."""
    from services.generation.engines.transformers import lean_llama

    ops = torch.ops.twin_int8
    g = torch.Generator().manual_seed(batch)
    heads, kv_heads, dim, rows, capacity = 9, 3, 64, 8, 64
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).bfloat16()
    cos, sin = (torch.randn(batch, dim, generator=g).bfloat16() for _ in range(2))
    lengths = torch.tensor([5 + 17 * i % 50 for i in range(batch)])
    cache = torch.randn(2, rows, kv_heads, capacity, dim, generator=g).bfloat16()
    expected_cache = cache.clone()
    got = ops.decode_attention(qkv, cos, sin, cache, lengths, heads, kv_heads)

    q = lean_llama._rope(qkv[:, :heads * dim].view(batch, heads, dim), cos[:, None], sin[:, None])
    k = lean_llama._rope(qkv[:, heads * dim:(heads + kv_heads) * dim].view(batch, kv_heads, dim), cos[:, None],
                         sin[:, None])
    v = qkv[:, (heads + kv_heads) * dim:].view(batch, kv_heads, dim)
    line = torch.arange(batch)
    expected_cache[0, line, :, lengths] = k
    expected_cache[1, line, :, lengths] = v
    length = int(lengths.max()) + 1
    mask = (torch.arange(length) < (lengths + 1)[:, None])[:, None, None, :]
    expected = lean_llama._decode_attention(q[:, :, None].float(), expected_cache[0, :batch, :, :length].float(),
                                            expected_cache[1, :batch, :, :length].float(), mask).reshape(batch, -1)
    assert torch.equal(cache, expected_cache)
    assert got.dtype == torch.bfloat16 and got.shape == (batch, heads * dim)
    torch.testing.assert_close(got.float(), expected.bfloat16().float(), atol=1e-2, rtol=1e-2)

    x = torch.randn(batch, 576, generator=g).bfloat16()
    delta = torch.randn(batch, 576, generator=g).bfloat16()
    weight = torch.rand(576, generator=g).bfloat16()
    residual = x + delta
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-5), lean_llama._rms(x, weight, 1e-5), atol=0.02, rtol=0.01)
    normed = ops.add_rms_(x, delta, weight, 1e-5)
    assert torch.equal(x, residual), "the residual stream is added to in place, rounded like torch's bf16 add"
    torch.testing.assert_close(normed, lean_llama._rms(residual, weight, 1e-5), atol=0.02, rtol=0.01)
    gate_up = torch.randn(batch, 2 * 1536, generator=g).bfloat16()
    expected_act = torch.nn.functional.silu(gate_up[:, :1536]) * gate_up[:, 1536:]
    torch.testing.assert_close(ops.silu_mul(gate_up), expected_act, atol=0.02, rtol=0.01)
    odd = torch.randn(batch, 2 * 40, generator=g).bfloat16()  # 40 features: 16 lanes twice, then a tail of 8
    torch.testing.assert_close(ops.silu_mul(odd), torch.nn.functional.silu(odd[:, :40]) * odd[:, 40:], atol=0.02,
                               rtol=0.01)
    torch.testing.assert_close(ops.rms_norm(x[:, :40].contiguous(), weight[:40].contiguous(), 1e-5),
                               lean_llama._rms(x[:, :40], weight[:40], 1e-5), atol=0.02, rtol=0.01)


@needs_cpu
@pytest.mark.parametrize("batch", [1, 5])
def test_one_native_call_a_step_decodes_the_bits_the_per_operation_calls_do(op, batch):
    """decode_layers (every layer in one call, steps without adapters) against the same engine's
    per-operation calls from Python, on a small random Llama: the same logits and cache, bit for bit."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from services.generation.engines.transformers import lean_llama

    torch.manual_seed(batch)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                         max_position_embeddings=128))
    engine = lean_llama.LeanLlama(model, int8=True, rows=8, int8_op=op)
    assert engine.layer_weights is not None, "every layer tiled at its true size: one call a step"
    for row in range(batch):  # a prompt per row, so attention reads real keys and values
        engine.prefill(row, torch.randint(0, 256, (4 + 3 * row,)), 0, None)
    ids, lengths = torch.randint(0, 256, (batch,)), torch.tensor([4 + 3 * row for row in range(batch)])
    before = engine.kv.clone()
    one_call = engine.step(ids, lengths, [None] * batch)[0]
    after, calls = engine.kv.clone(), []
    engine.kv.copy_(before)
    engine.layer_weights, layer_weights = None, engine.layer_weights
    real = engine.ops.decode_attention
    engine.ops = type("Counting", (), {n: getattr(torch.ops.twin_int8, n) for n in ("rms_norm", "add_rms_",
                                                                                     "silu_mul")})()
    engine.ops.decode_attention = lambda *a: calls.append(1) or real(*a)
    per_operation = engine.step(ids, lengths, [None] * batch)[0]
    assert len(calls) == 3, "the reference went through the per-operation calls"
    assert torch.equal(one_call, per_operation) and torch.equal(after, engine.kv) and not torch.equal(before, after)
    with pytest.raises(RuntimeError, match="one weight of each kind per layer"):
        torch.ops.twin_int8.decode_layers(torch.zeros(1, 64).bfloat16(), *[torch.zeros(1, 16).bfloat16()] * 2,
                                          engine.kv, torch.tensor([0]), 4, 2, 1e-5, layer_weights[0],
                                          *[w[:2] for w in layer_weights[1:]], engine.norm)


@needs_cpu
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(9, 3, 64), (8, 4, 64), (8, 2, 64), (4, 2, 128),
                                                     (6, 6, 32), (8, 2, 128)])
def test_a_rows_attention_is_the_same_bits_alone_and_batched(op, heads, kv_heads, dim):
    """Batched, the heads that share a key/value head attend in one task (each key widened once);
    a row alone goes head by head: the same operations per head, so the same bits, and the same cache."""
    g = torch.Generator().manual_seed(heads * dim)
    batch, capacity = 8, 48
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).bfloat16()
    cos, sin = (torch.randn(batch, dim, generator=g).bfloat16() for _ in range(2))
    lengths = torch.tensor([3 + 5 * i for i in range(batch)])
    cache = torch.randn(2, batch, kv_heads, capacity, dim, generator=g).bfloat16()
    alone = [cache[:, row:row + 1].clone() for row in range(batch)]
    batched = torch.ops.twin_int8.decode_attention(qkv, cos, sin, cache, lengths, heads, kv_heads)
    for row in range(batch):
        one = torch.ops.twin_int8.decode_attention(qkv[row:row + 1], cos[row:row + 1], sin[row:row + 1], alone[row],
                                                   lengths[row:row + 1], heads, kv_heads)
        assert torch.equal(one[0], batched[row]) and torch.equal(alone[row][:, 0], cache[:, row])


@needs_cpu
def test_fused_attention_refuses_a_position_outside_the_cache(op):
    cache = torch.zeros(2, 1, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="outside the cache"):
        torch.ops.twin_int8.decode_attention(torch.zeros(1, 48).bfloat16(), torch.zeros(1, 16).bfloat16(),
                                             torch.zeros(1, 16).bfloat16(), cache, torch.tensor([16]), 1, 1)
