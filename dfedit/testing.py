"""Tiny randomly-initialised IF checkpoints with the real block types, and the real full-size configs.

Tests and benchmarks build these once and save them with save_pretrained, so they load through
the project's own loading code exactly as a user's local directory would. The real IF-I-XL /
IF-II-L UNet configs (keys from their Hub config.json files) build full-size random models for
GPU timing, or meta-device models that prove the code handles full size without memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a photo of an astronaut riding a horse the oil painting of a snowy mountain village "
         "high quality rocket ship man wearing hat skull forest old amalfi coast campanile dog cat").split()


def tiny_tokenizer():
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5Tokenizer

    sp = SentencePieceUnigramTokenizer()
    sentences = [" ".join(WORDS[i:i + 6]) for i in range(0, len(WORDS), 3)] * 4
    sp.train_from_iterator(sentences, vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    vocab = [tuple(v) for v in json.loads(sp._tokenizer.to_str())["model"]["vocab"]]  # (piece, score)
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(cfg).eval()


def _scheduler(sample_max_value: float):
    from diffusers import DDPMScheduler
    return DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000, prediction_type="epsilon",
                         variance_type="learned_range", thresholding=True, dynamic_thresholding_ratio=0.95,
                         sample_max_value=sample_max_value, clip_sample=True)


def tiny_stage1_unet(sample_size: int = 16):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=3, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, encoder_hid_dim=32, encoder_hid_dim_type="text_proj",
        addition_embed_type="text", addition_embed_type_num_heads=2, cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_num_groups=8,
    ).eval()


def tiny_stage2_unet(sample_size: int = 32):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(2)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=6, out_channels=6, layers_per_block=1,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D",
                          "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                        "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, encoder_hid_dim=32, encoder_hid_dim_type="text_proj",
        class_embed_type="timestep", time_embedding_dim=64, resnet_skip_time_act=True,
        mid_block_scale_factor=1 / 0.7071, resnet_out_scale_factor=1 / 0.7071,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
        norm_num_groups=8,
    ).eval()


def save_tiny_if(root: Path, stage1_size: int = 16, stage2_size: int = 32) -> tuple[Path, Path]:
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline

    tok, t5 = tiny_tokenizer(), tiny_t5()
    s1 = IFPipeline(tokenizer=tok, text_encoder=t5, unet=tiny_stage1_unet(stage1_size), scheduler=_scheduler(1.5),
                    safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    s2 = IFSuperResolutionPipeline(
        tokenizer=tok, text_encoder=t5, unet=tiny_stage2_unet(stage2_size), scheduler=_scheduler(1.0),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    p1, p2 = root / "tiny-if-I", root / "tiny-if-II"
    s1.save_pretrained(p1)
    s2.save_pretrained(p2)
    return p1, p2


IF_I_XL_UNET = dict(
    sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
    block_out_channels=[704, 1408, 2112, 2816],
    down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
    attention_head_dim=64, cross_attention_dim=2816, encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
    addition_embed_type="text", addition_embed_type_num_heads=64, cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift", act_fn="gelu", class_embed_type=None,
)

IF_II_L_UNET = dict(
    sample_size=256, in_channels=6, out_channels=6, layers_per_block=[2, 2, 3, 5, 5],
    block_out_channels=[160, 320, 640, 960, 1280],
    down_block_types=["ResnetDownsampleBlock2D"] * 3 + ["SimpleCrossAttnDownBlock2D"] * 2,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=["SimpleCrossAttnUpBlock2D"] * 2 + ["ResnetUpsampleBlock2D"] * 3,
    attention_head_dim=64, cross_attention_dim=1280, encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
    addition_embed_type="text", addition_embed_type_num_heads=64, cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift", act_fn="gelu", class_embed_type="timestep",
    mid_block_scale_factor=1.41422712, resnet_out_scale_factor=1.41422712, resnet_skip_time_act=True,
    time_embedding_dim=1280, time_embedding_act_fn="gelu",
)
