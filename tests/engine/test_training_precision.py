"""Weights that train are fp32 whatever dtype their checkpoint has, so small updates are not rounded away."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_qwen2
from tests.engine.test_runner import tiny_demo_cfg
from vltool.engine.precision import cast_for_training
from vltool.engine.runner import build_runner


@pytest.fixture(scope="module")
def saved_llms(module_tmp):
    """One tiny Qwen2, saved twice: in bf16 (as Qwen2.5 ships) and the same values in fp32."""
    root = module_tmp("llms")
    torch.manual_seed(0)
    llm = tiny_qwen2().to(torch.bfloat16)
    llm.save_pretrained(root / "bf16")
    llm.float().save_pretrained(root / "fp32")
    return root


def runner_for(llm_dir, tmp_path, name):
    """A runner for one demo step at lr 1e-5 whose LLM loads from ``llm_dir``; every part trains."""
    options = ("train_cfg.max_iters=1", "optim_wrapper.optimizer.lr=1e-5", "precision=bf16")
    cfg = tiny_demo_cfg(tmp_path, *options, "model.freeze_llm_input_embeddings=False", answer="Red, a warm one.")
    llm = dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=str(llm_dir))
    cfg.model.llm = llm
    return build_runner(cfg, str(tmp_path / name))


def one_step(llm_dir, tmp_path, name) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The LLM's weights before and after one AdamW step."""
    runner = runner_for(llm_dir, tmp_path, name)
    llm = runner.model.vlm.llm
    before = {key: value.detach().clone() for key, value in llm.named_parameters()}
    runner.train()
    return before, dict(llm.named_parameters())


def test_a_bf16_checkpoint_trains_in_fp32(saved_llms, tmp_path):
    assert AutoModelForCausalLM.from_pretrained(saved_llms / "bf16").dtype == torch.bfloat16
    runner = runner_for(saved_llms / "bf16", tmp_path, "work")
    trainable = {name: p.dtype for name, p in runner.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}, trainable


def test_one_step_at_lr_1e_5_moves_the_weights_as_in_fp32(saved_llms, tmp_path):
    before, after = one_step(saved_llms / "bf16", tmp_path, "bf16")
    reference_before, reference_after = one_step(saved_llms / "fp32", tmp_path, "fp32")
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(before[name].float(), reference_before[name], rtol=0, atol=0)
    step = (after[name] - before[name]).float()
    reference_step = reference_after[name] - reference_before[name]
    assert reference_step.abs().mean() > 5e-6  # Adam's first step is about lr per weight
    # in bf16 most of these 1e-5 updates vanish (the weights are ~1e-2, bf16 resolves ~1e-4 there)
    torch.testing.assert_close(step, reference_step, rtol=1e-3, atol=1e-8)


def test_under_autocast_frozen_weights_keep_their_dtype():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    cast_for_training(model, keep_frozen_dtype=True)
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    cast_for_training(model, keep_frozen_dtype=False)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
