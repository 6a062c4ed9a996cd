"""IF stage I/II through the project's own loading code: exact parity with diffusers' pipelines,
real full-size configs on the meta device, the prompt cache, and loading errors."""

import pytest
import torch
from diffusers import IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel

from dfedit import DFEdit, DfeditError
from dfedit.testing import IF_I_XL_UNET, IF_II_L_UNET

PROMPT = "an oil painting of a snowy mountain village"
COURSE_TS = list(range(990, -1, -30))
STAGE2_TS = list(range(980, -1, -20))


def _pipes(p1, p2):
    kw = dict(safety_checker=None, watermarker=None, feature_extractor=None, requires_safety_checker=False)
    s1, s2 = IFPipeline.from_pretrained(p1, **kw), IFSuperResolutionPipeline.from_pretrained(p2, **kw)
    for pipe in (s1, s2):
        pipe.set_progress_bar_config(disable=True)
    return s1, s2


def _api(p1, p2):
    return DFEdit(model=str(p1), stage2=str(p2), device="cpu", quiet=True)


def test_sample_equals_ifpipeline_bit_for_bit(tiny_models):
    p1, p2 = tiny_models
    s1, _ = _pipes(p1, p2)
    g = torch.Generator("cpu").manual_seed(777)
    ref = s1(PROMPT, timesteps=COURSE_TS, guidance_scale=7.0, generator=g, clean_caption=False,
             output_type="pt", num_images_per_prompt=2).images
    ours = _api(p1, p2).sample(PROMPT, seed=777, cfg=7.0, stride=30, num_samples=2, upscale=False)
    assert ours.images.shape == ref.shape == (2, 3, 16, 16)
    assert torch.equal(ours.images, ref)
    other = _api(p1, p2).sample(PROMPT, seed=778, cfg=7.0, num_samples=2, upscale=False)
    assert not torch.equal(other.images, ref)


def test_channels_last_changes_only_rounding(tiny_models):
    """dfedit runs IF UNets channels_last on CUDA (contiguous on CPU, where the parity tests above
    hold bit for bit). Forced on here: the result may differ only by float rounding, not by a
    wrong stride or a transposed image."""
    from dfedit.backends.deepfloyd import configure_unet
    p1, p2 = tiny_models
    df = _api(p1, p2)
    ref = df.sample(PROMPT, seed=777, cfg=7.0, stride=30, upscale=False).images
    unet = df.stage1().unet
    assert unet.conv_in.weight.is_contiguous()  # the CPU default
    configure_unet(unet, torch.device("cpu"), channels_last=True)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    ours = df.sample(PROMPT, seed=777, cfg=7.0, stride=30, upscale=False).images
    assert not torch.equal(ours, ref)  # the layout really changed the kernels
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_unet_without_sdpa_attention_is_refused():
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    from dfedit.backends.deepfloyd import configure_unet
    from dfedit.testing import tiny_stage1_unet

    unet = tiny_stage1_unet()
    assert configure_unet(unet, torch.device("cpu")) is unet
    unet.set_attn_processor(AttnAddedKVProcessor())
    with pytest.raises(DfeditError, match="AttnAddedKVProcessor, not torch's scaled_dot_product_attention"):
        configure_unet(unet, torch.device("cpu"))


def test_stage2_equals_superresolution_pipeline_bit_for_bit(tiny_models):
    """Both stages share one generator, as in diffusers' IF example; stage II at its default 50 steps."""
    p1, p2 = tiny_models
    s1, s2 = _pipes(p1, p2)
    g = torch.Generator("cpu").manual_seed(5)
    low = s1(PROMPT, timesteps=COURSE_TS, guidance_scale=7.0, generator=g, clean_caption=False,
             output_type="pt").images
    ref = s2(image=low, prompt=PROMPT, timesteps=STAGE2_TS, guidance_scale=4.0, noise_level=250, generator=g,
             clean_caption=False, output_type="pt").images
    ours = _api(p1, p2).sample(PROMPT, seed=5, cfg=7.0, upscale=True, stage2_steps=50, stage2_cfg=4.0,
                               noise_level=250)
    assert torch.equal(ours.stage1, low)
    assert ours.images.shape == ref.shape == (1, 3, 32, 32)
    assert torch.equal(ours.images, ref)


def test_stage2_noise_level_matters(tiny_models):
    p1, p2 = tiny_models
    low = torch.zeros(1, 3, 16, 16)
    api = _api(p1, p2)
    a = api.upscale(low, PROMPT, generator=torch.Generator().manual_seed(0), steps=5, noise_level=250)
    b = api.upscale(low, PROMPT, generator=torch.Generator().manual_seed(0), steps=5, noise_level=100)
    assert not torch.equal(a.images, b.images) and a.meta["noise_level"] == 250


@pytest.mark.parametrize("cfg_dict,params,size,channels", [(IF_I_XL_UNET, 4.305e9, 64, 3),
                                                          (IF_II_L_UNET, 1.243e9, 256, 3)])
def test_real_if_configs_build_on_meta_device(cfg_dict, params, size, channels, if_schedule):
    """Full-size IF UNets from their real configs: sizes come from the config, not constants."""
    from dfedit.backends.deepfloyd import IFDenoiser

    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg_dict)
    assert abs(sum(p.numel() for p in unet.parameters()) - params) / params < 1e-3
    upscaler = cfg_dict["class_embed_type"] == "timestep"
    den = IFDenoiser(unet, if_schedule, "real", None, torch.device("meta"), torch.float16,
                     noising_schedule=if_schedule if upscaler else None)
    assert (den.sample_size, den.channels, den.learned_variance, den.is_upscaler) == (size, channels, True, upscaler)
    x = torch.zeros(2, 3, size // 8, size // 8, device="meta")  # a meta forward: shapes only
    from dfedit.denoiser import Cond
    cond = Cond(text=torch.zeros(2, 77, 4096, device="meta"))
    if upscaler:
        cond = cond.with_image(torch.zeros_like(x), torch.tensor([250, 250], device="meta"))
    eps, var = den(x, 500, cond)
    assert eps.shape == var.shape == x.shape


# ---- the prompt embedding cache ------------------------------------------------------------------

def _count_t5_loads(monkeypatch):
    from transformers import T5EncoderModel
    loads = []
    real = T5EncoderModel.from_pretrained.__func__

    def counting(cls, *a, **k):
        loads.append(a[0] if a else k)
        return real(cls, *a, **k)

    monkeypatch.setattr(T5EncoderModel, "from_pretrained", classmethod(counting))
    return loads


def test_cache_loads_t5_only_for_new_prompts(tiny_models, monkeypatch):
    p1, p2 = tiny_models
    loads = _count_t5_loads(monkeypatch)
    api = _api(p1, p2)
    api.embed(["a dog", "a cat", ""])
    assert len(loads) == 1  # one load for all three prompts
    first = api.sample("a dog", seed=1, upscale=False, stride=90)
    assert len(loads) == 1  # prompt and "" were cached
    again = _api(p1, p2).sample("A Dog ", seed=1, upscale=False, stride=90)  # same after lower/strip
    assert len(loads) == 1 and torch.equal(first.images, again.images)
    _api(p1, p2).sample("a horse", seed=1, upscale=False, stride=90)
    assert len(loads) == 2


def test_cached_embedding_equals_fresh_t5_output(tiny_models):
    from transformers import AutoTokenizer, T5EncoderModel
    p1, _ = tiny_models
    api = _api(p1, p1)
    enc = api._text_encoder()
    cached = enc.encode(["a photo of a dog"]).text
    tok = AutoTokenizer.from_pretrained(p1 / "tokenizer")
    t5 = T5EncoderModel.from_pretrained(p1 / "text_encoder")
    ids = tok("a photo of a dog", padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        fresh = t5(ids.input_ids, attention_mask=ids.attention_mask)[0]
    assert cached.shape == (1, 77, 32) and torch.equal(cached, fresh)


# ---- loading errors ------------------------------------------------------------------------------

def test_missing_model_directory_is_one_sentence(tmp_path):
    with pytest.raises(DfeditError, match="does not exist"):
        DFEdit(model=str(tmp_path / "nope"), device="cpu").stage1()
    with pytest.raises(DfeditError, match="not a diffusers model directory"):
        DFEdit(model=str(tmp_path), device="cpu").stage1()


def test_stage_mixup_is_reported(tiny_models):
    p1, p2 = tiny_models
    with pytest.raises(DfeditError, match="not a stage I"):
        DFEdit(model=str(p2), device="cpu").stage1()
    with pytest.raises(DfeditError, match="not a stage II"):
        DFEdit(model=str(p1), stage2=str(p1), device="cpu").stage2()


@pytest.mark.parametrize("exc,message", [("GatedRepoError", "gated: accept its licence"),
                                         ("RepositoryNotFoundError", "not a model on the Hub"),
                                         ("LocalEntryNotFoundError", "not in the local Hub cache")])
def test_hub_failures_become_one_sentence(exc, message, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors as hfe

    def fail(*a, **k):
        cls = getattr(hfe, exc)
        if exc == "LocalEntryNotFoundError":
            raise cls("offline")
        import requests
        raise cls("denied", response=requests.Response()) if "Repo" in exc else cls("x")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(DfeditError, match=message) as e:
        DFEdit(model="DeepFloyd/IF-I-XL-v1.0", device="cpu").stage1()
    assert "\n" not in str(e.value)


def test_hub_id_is_resolved_offline_to_the_local_snapshot(tiny_models, monkeypatch):
    """A Hub id goes through snapshot_download with only the needed files and local_files_only under
    HF_HUB_OFFLINE; its answer (a local snapshot dir) is then loaded like any directory."""
    import huggingface_hub
    p1, p2 = tiny_models
    seen = {}

    def fake(repo, allow_patterns, ignore_patterns, local_files_only):
        seen.update(repo=repo, patterns=allow_patterns, offline=local_files_only)
        return str(p1)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    den = DFEdit(model="DeepFloyd/IF-I-XL-v1.0", device="cpu", quiet=True).stage1()
    assert den.sample_size == 16 and seen["offline"] is True and seen["repo"] == "DeepFloyd/IF-I-XL-v1.0"
    assert "unet/*.safetensors.index.json" in seen["patterns"]
    assert not any(p.endswith(".bin") for p in seen["patterns"])


def test_fp16_variant_is_preferred_when_running_in_half_precision(tiny_models, tmp_path):
    """A directory with both weight files: fp16 runs load *.fp16.safetensors, fp32 runs the full file."""
    import shutil
    from diffusers import UNet2DConditionModel
    p1, _ = tiny_models
    d = tmp_path / "with-variant"
    shutil.copytree(p1, d)
    unet = UNet2DConditionModel.from_pretrained(p1, subfolder="unet")
    marker = unet.conv_in.bias.detach().clone()
    with torch.no_grad():
        unet.conv_in.bias.fill_(0.125)  # the fp16 file differs, so we can tell which one loaded
    unet.to(torch.float16).save_pretrained(d / "unet", variant="fp16")
    half = DFEdit(model=str(d), device="cpu", dtype="float16", quiet=True).stage1()
    assert half.unet.dtype == torch.float16 and torch.all(half.unet.conv_in.bias == 0.125)
    full = DFEdit(model=str(d), device="cpu", dtype="float32", quiet=True).stage1()
    assert full.unet.dtype == torch.float32 and torch.equal(full.unet.conv_in.bias, marker)


def test_fp16_hub_download_asks_only_for_fp16_weights(tiny_models, monkeypatch):
    """fp16 runs fetch only the fp16 variant (IF-I-XL's fp32 UNet alone is 17 GB); a repo without
    one is fetched again with the full-precision patterns."""
    import huggingface_hub
    from dfedit.backends.hub import resolve_snapshot
    p1, _ = tiny_models
    calls = []

    def fake(repo, allow_patterns, ignore_patterns, local_files_only):
        calls.append((allow_patterns, ignore_patterns))
        return str(p1)  # the tiny checkpoint has no fp16 files

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    resolve_snapshot("DeepFloyd/IF-I-XL-v1.0", ["unet"], fp16=True)
    (first, ign1), (second, ign2) = calls
    import fnmatch
    fp32_file, fp16_file = "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"
    fp16_shard = "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors"

    def fetched(name, allow, ignore):
        return any(fnmatch.fnmatch(name, p) for p in allow) and not any(fnmatch.fnmatch(name, p) for p in ignore)

    assert fetched(fp16_file, first, ign1) and fetched(fp16_shard, first, ign1)
    assert not fetched(fp32_file, first, ign1)
    assert fetched(fp32_file, second, ign2) and not fetched(fp16_file, second, ign2)
    assert not fetched(fp16_shard, second, ign2) and not fetched("unet/diffusion_pytorch_model.bin", second, ign2)
