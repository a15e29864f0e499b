"""Inference precision: 'auto' follows the hardware, bf16 really runs the matrix products in bfloat16."""

from __future__ import annotations

import pytest
import torch

from lmindexer.precision import inference_autocast, native_bf16, resolve_precision


def test_auto_chooses_bf16_only_where_the_cpu_computes_it_natively(cpu_bf16):
    cpu_bf16(False)
    assert not native_bf16("cpu")
    assert resolve_precision("auto") == "fp32"
    cpu_bf16(True)
    assert resolve_precision("auto") == "bf16"


def test_an_explicit_precision_is_kept_whatever_the_hardware(cpu_bf16):
    cpu_bf16(False)
    assert resolve_precision("bf16") == "bf16"
    cpu_bf16(True)
    assert resolve_precision("fp32") == "fp32"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16")


def test_bf16_runs_matrix_products_in_bfloat16_and_fp32_leaves_them_alone():
    layer = torch.nn.Linear(16, 4)
    inputs = torch.randn(3, 16)
    with inference_autocast("bf16"):
        assert layer(inputs).dtype == torch.bfloat16
    with inference_autocast("fp32"):
        assert layer(inputs).dtype == torch.float32
