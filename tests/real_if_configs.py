"""The real IF-I-XL and IF-II-L UNet configs (keys from their Hub config.json files, per
shared/reference/deepfloyd-if.md), for meta-device builds that prove the code handles full size."""

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
