import torch
import torch.nn.functional as F
from transformers import LlavaConfig, LlavaForConditionalGeneration

from vltool.constants import IGNORE_INDEX

IMAGE_ID = 151646


def prompt_ids(n_images: int, text_len: int = 7, tokens_per_image: int = 16) -> list[int]:
    ids = [151644, 872, 198]
    for i in range(n_images):
        ids += [IMAGE_ID] * tokens_per_image + [198 + i]
    return ids + list(range(1000, 1000 + text_len))


def test_logits_equal_hugging_face_llava(tiny_vlm):
    """Same weights, same ids: vltool's model and transformers' LlavaForConditionalGeneration agree."""
    encoder, llm = tiny_vlm.vision_encoder.model, tiny_vlm.llm
    config = LlavaConfig(
        vision_config=encoder.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_id=IMAGE_ID,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        multimodal_projector_bias=True,
    )
    config.vision_config.model_type = "clip_vision_model"
    hf = LlavaForConditionalGeneration(config).eval()
    hf.model.vision_tower.load_state_dict(encoder.state_dict())
    hf.model.multi_modal_projector.load_state_dict(tiny_vlm.projector.state_dict())
    hf.model.language_model.load_state_dict(llm.model.state_dict())
    hf.lm_head.load_state_dict(llm.lm_head.state_dict())
    torch.manual_seed(1)
    input_ids = torch.tensor([prompt_ids(1), prompt_ids(1)])
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = tiny_vlm(input_ids, pixel_values=pixel_values)
        theirs = hf(input_ids=input_ids, pixel_values=pixel_values).logits
    assert ours.shape == theirs.shape == (2, input_ids.shape[1], 151936)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_several_images_land_in_order(tiny_vlm):
    """Row 0 has two images, row 1 one: features fill placeholders row by row, image by image."""
    row0, row1 = prompt_ids(2), prompt_ids(1, text_len=7 + 17)
    input_ids = torch.tensor([row0, row1])
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        embeds = tiny_vlm.embed(input_ids, pixel_values)
        features = tiny_vlm.encode_images(pixel_values)  # [3, 16, hidden]
    positions0 = (input_ids[0] == IMAGE_ID).nonzero().squeeze(1)
    positions1 = (input_ids[1] == IMAGE_ID).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, positions0[:16]], features[0])
    torch.testing.assert_close(embeds[0, positions0[16:]], features[1])
    torch.testing.assert_close(embeds[1, positions1], features[2])
    text = input_ids[1] != IMAGE_ID
    torch.testing.assert_close(embeds[1, text], tiny_vlm.llm.get_input_embeddings()(input_ids[1, text]))


def test_loss_at_supervised_positions_equals_full_logits_loss(tiny_vlm):
    input_ids = torch.tensor([prompt_ids(1), prompt_ids(1)])
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, -3:] = input_ids[0, -3:]
    labels[1, -5:] = input_ids[1, -5:]
    pixel_values = torch.randn(2, 3, 32, 32)
    loss = tiny_vlm.loss(input_ids, labels, pixel_values=pixel_values)
    logits = tiny_vlm(input_ids, pixel_values=pixel_values)
    reference = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(loss, reference)


def test_freeze_flags_and_trainable_state(tiny_vlm, tokenizer):
    from conftest import tiny_clip, tiny_qwen2

    from vltool.model.projectors import MLPProjector
    from vltool.model.vision_encoder import VisionEncoder
    from vltool.model.vlm import VisionLanguageModel

    encoder = VisionEncoder(tiny_clip())
    model = VisionLanguageModel(encoder, MLPProjector(32, 64), tiny_qwen2(), IMAGE_ID)
    assert set(model.trainable_state_dict()) == {
        "projector.linear_1.weight",
        "projector.linear_1.bias",
        "projector.linear_2.weight",
        "projector.linear_2.bias",
    }
    input_ids = torch.tensor([prompt_ids(1)])
    labels = input_ids.clone()
    model.loss(input_ids, labels, pixel_values=torch.randn(1, 3, 32, 32)).backward()
    assert model.projector.linear_1.weight.grad is not None
    assert model.llm.model.embed_tokens.weight.grad is None


def test_frozen_input_embeddings_keep_head_training(tokenizer):
    from conftest import tiny_clip, tiny_qwen2

    from vltool.model.projectors import MLPProjector
    from vltool.model.vision_encoder import VisionEncoder
    from vltool.model.vlm import VisionLanguageModel

    llm = tiny_qwen2(num_hidden_layers=1, tie_word_embeddings=False)
    model = VisionLanguageModel(
        VisionEncoder(tiny_clip()),
        MLPProjector(32, 64),
        llm,
        IMAGE_ID,
        freeze_llm=False,
        freeze_llm_input_embeddings=True,
    )
    input_ids = torch.tensor([prompt_ids(1)])
    model.loss(input_ids, input_ids.clone(), pixel_values=torch.randn(1, 3, 32, 32)).backward()
    assert llm.model.embed_tokens.weight.grad is None
    assert llm.lm_head.weight.grad is not None and llm.model.layers[0].mlp.up_proj.weight.grad is not None
    assert "llm.model.embed_tokens.weight" not in model.trainable_state_dict()
