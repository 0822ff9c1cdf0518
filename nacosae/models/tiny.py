"""Tiny random-weight vision models: real torchvision-style modules small enough for a CPU test.

Their results mean nothing; they exist so that tests and `--preset smoke` run the real code
paths in seconds without downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn


class TinyCNN(nn.Module):
    """A three-stage CNN whose module names mirror torchvision ResNets (layer1.., avgpool, fc)."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.conv1 = nn.Conv2d(3, width, 7, stride=4, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = stage(width, width * 2)
        self.layer2 = stage(width * 2, width * 4)
        self.layer3 = stage(width * 4, width * 4)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):  # noqa: ANN001, ANN201 - torch convention
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    return TinyCNN(num_classes=num_classes)


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """torchvision's VisionTransformer at 224 px with two 32-wide layers."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=224,
        patch_size=32,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=num_classes,
    )


# ---------------------------------------------------------------- text-to-image

TINY_IMAGE_SIZE = 64
_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (vocab.json + merges.txt) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(_LETTERS) + [f"{c}</w>" for c in _LETTERS] + [",", ",</w>", "."]
    tokens += [".</w>", "-", "-</w>", *_CLIP_SPECIALS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_text2image_pipeline(workdir: Path, seed: int = 0) -> Any:
    """A StableDiffusionPipeline with 8-32 channel components making 64 px images from 8 x 8
    latents (SD's layout at a tiny scale)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(
        str(write_tiny_clip_tokenizer(workdir / "tok")), model_max_length=77
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8,  # 8 x 8 latents: attention over 64 tokens is cheap
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),  # four blocks: 8x downsampling, like SD's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE,
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sentencepiece_tokenizer(cls: Any, specials: dict[str, str]) -> Any:
    """A character-level Unigram tokenizer (the kind T5 and Gemma use), built in memory as
    tokenizer class `cls` with its `specials` (e.g. eos_token="</s>")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = [*dict.fromkeys(specials.values())]
    words += [f"\u2581{c}" for c in _LETTERS] + list(_LETTERS) + [",", ".", "-", ":"]
    unknown = words.index(specials.get("unk_token", words[0]))
    model = Tokenizer(models.Unigram([(w, -float(i)) for i, w in enumerate(words)], unknown))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    if "eos_token" in specials and cls.__name__.startswith("T5"):
        eos = specials["eos_token"]
        model.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, words.index(eos))]
        )
    return cls(tokenizer_object=model, **specials)


def tiny_transformer_pipeline(kind: str, workdir: Path, seed: int = 0) -> Any:
    """A diffusers pipeline with a transformer denoiser at a tiny scale (64 px images): `sd3`
    (StableDiffusion3Pipeline), `flux` (FluxPipeline, schnell-like: no guidance embeddings),
    `pixart-sigma` (PixArtSigmaPipeline) or `sana` (SanaPipeline); their text encoders (CLIP, T5,
    Gemma 2) are random and a few dozen units wide. (FluxPipeline renders 1024 px unless told a
    size: its default sample size is fixed in the class.)"""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(seed)
    clip = transformers.CLIPTokenizer.from_pretrained(
        str(write_tiny_clip_tokenizer(workdir / "tok")), model_max_length=77
    )
    t5_specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

    def t5() -> tuple[Any, Any]:
        tokenizer = tiny_sentencepiece_tokenizer(transformers.T5TokenizerFast, t5_specials)
        config = transformers.T5Config(
            vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4
        )
        return transformers.T5EncoderModel(config), tokenizer

    def clip_encoder(cls: Any) -> Any:
        return cls(
            transformers.CLIPTextConfig(
                vocab_size=len(clip), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                bos_token_id=clip.bos_token_id, eos_token_id=clip.eos_token_id,
                pad_token_id=clip.pad_token_id,
            )
        )  # fmt: skip

    def vae(latents: int) -> Any:
        return diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, latent_channels=latents, norm_num_groups=4, sample_size=64,
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
            scaling_factor=1.5035,
        )  # fmt: skip

    flow = diffusers.FlowMatchEulerDiscreteScheduler()
    if kind == "sd3":
        text_encoder_3, tokenizer_3 = t5()
        return diffusers.StableDiffusion3Pipeline(
            transformer=diffusers.SD3Transformer2DModel(
                sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                joint_attention_dim=32, pooled_projection_dim=64,
            ),
            text_encoder=clip_encoder(transformers.CLIPTextModelWithProjection),
            text_encoder_2=clip_encoder(transformers.CLIPTextModelWithProjection),
            text_encoder_3=text_encoder_3, tokenizer=clip, tokenizer_2=clip,
            tokenizer_3=tokenizer_3, vae=vae(4), scheduler=flow,
        )  # fmt: skip
    if kind == "flux":
        text_encoder_2, tokenizer_2 = t5()
        return diffusers.FluxPipeline(
            transformer=diffusers.FluxTransformer2DModel(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=False,
            ),
            text_encoder=clip_encoder(transformers.CLIPTextModel), text_encoder_2=text_encoder_2,
            tokenizer=clip, tokenizer_2=tokenizer_2, vae=vae(4), scheduler=flow,
        )  # fmt: skip
    if kind == "pixart-sigma":
        text_encoder, tokenizer = t5()
        return diffusers.PixArtSigmaPipeline(
            transformer=diffusers.PixArtTransformer2DModel(
                sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                num_attention_heads=3, caption_channels=32, in_channels=4, cross_attention_dim=24,
                out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
                num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                norm_elementwise_affine=False, norm_eps=1e-6,
            ),
            text_encoder=text_encoder, tokenizer=tokenizer, vae=vae(4),
            scheduler=diffusers.DPMSolverMultistepScheduler(),
        )  # fmt: skip
    if kind == "sana":
        specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                    "unk_token": "<unk>"}  # fmt: skip
        tokenizer = tiny_sentencepiece_tokenizer(transformers.GemmaTokenizerFast, specials)
        gemma = transformers.Gemma2Model(
            transformers.Gemma2Config(
                head_dim=16, hidden_size=8, intermediate_size=64, num_attention_heads=2,
                num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tokenizer),
            )
        )  # fmt: skip
        return diffusers.SanaPipeline(
            transformer=diffusers.SanaTransformer2DModel(
                patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
                attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
                cross_attention_dim=8, caption_channels=8, sample_size=32,
            ),
            vae=diffusers.AutoencoderDC(
                in_channels=3, latent_channels=4, attention_head_dim=2,
                encoder_block_types=("ResBlock", "EfficientViTBlock"),
                decoder_block_types=("ResBlock", "EfficientViTBlock"),
                encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                downsample_block_type="conv", upsample_block_type="interpolate",
                decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
            ),
            text_encoder=gemma, tokenizer=tokenizer,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
        )  # fmt: skip
    raise ValueError(f"no tiny {kind!r} pipeline: use sd3, flux, pixart-sigma or sana")


# ---------------------------------------------------------------- language model

SMOKE_WORDS = (
    "red", "blue", "green", "yellow", "striped", "round", "wooden", "metal", "furry", "shiny",
    "apple", "boat", "car", "dog", "cat", "tree", "house", "bird", "fence", "flower",
    "mountain", "lake", "bridge", "clock", "guitar", "chair", "lamp", "shoe", "kite", "drum",
)  # fmt: skip
_REASONS = ("the", "unit", "likes", "best", "concepts", "share", "try", "something", "similar")
_TAGS = ("<thinking>", "</thinking>", "<answer>", "</answer>")


def smoke_tokenizer() -> Any:
    """A word-level tokenizer over the smoke words and format tags, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|unk|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    words = [*specials, *_TAGS, *SMOKE_WORDS, *_REASONS]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<|unk|>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        unk_token="<|unk|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        padding_side="left",
        additional_special_tokens=specials[3:],
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return tokenizer


def smoke_language_model(seed: int = 0) -> tuple[Any, Any]:
    """A random two-layer Llama over `smoke_tokenizer()`'s vocabulary. Paired with
    `smoke_answer_constraint` its sampled replies are well-formed and meaningless."""
    tokenizer = smoke_tokenizer()
    return tiny_llama(tokenizer, len(tokenizer), seed), tokenizer


def tiny_llama(tokenizer: Any, vocab_size: int, seed: int = 0) -> Any:
    """A random two-layer Llama of hidden size 16 over `tokenizer` (its special token ids)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=8192,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def smoke_answer_constraint(tokenizer: Any) -> Any:
    """A factory for `generate(prefix_allowed_tokens_fn=...)`: given the prompt length, it allows
    only `<thinking> 1-6 words </thinking> <answer> 1-3 smoke words </answer>` then the end."""
    ids = tokenizer.convert_tokens_to_ids
    think, end_think, answer, end_answer = (ids(t) for t in _TAGS)
    reasons, concepts = ids(list(_REASONS)), ids(list(SMOKE_WORDS))
    eos = tokenizer.eos_token_id

    def for_prompt(prompt_length: int) -> Any:
        def allowed(_batch: int, input_ids: Any) -> list[int]:
            generated = input_ids[prompt_length:].tolist()
            if not generated:
                return [think]
            if end_answer in generated:
                return [eos]
            if answer in generated:
                n = len(generated) - generated.index(answer) - 1
                return concepts if n == 0 else [end_answer] if n >= 3 else [*concepts, end_answer]
            if end_think in generated:
                return [answer]
            n = len(generated) - 1
            return reasons if n == 0 else [end_think] if n >= 6 else [*reasons, end_think]

        return allowed

    return for_prompt


SMOKE_CONSTRAINT = "smoke-tags"
ANSWER_CONSTRAINTS = {SMOKE_CONSTRAINT: smoke_answer_constraint}  # name -> f(tokenizer)


# ---------------------------------------------------------------- sentence embedder


def write_tiny_sentence_embedder(folder: Path, workdir: Path, seed: int = 0) -> Path:
    """A sentence-transformers model (a one-layer 16-wide BERT and mean pooling) over a
    word-piece vocabulary of the smoke words, saved to `folder`; its embeddings are random."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for text in (*SMOKE_WORDS, *_REASONS) for w in text.split()})
    bert_folder = workdir / "tiny-bert"
    bert_folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (bert_folder / "vocab.txt").write_text("\n".join([*specials, *words, *_LETTERS]) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(str(bert_folder))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert_folder)
    tokenizer.save_pretrained(bert_folder)
    transformer = Transformer(str(bert_folder), max_seq_length=32)
    pooling = Pooling(config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    return folder


# ---------------------------------------------------------------- a tokenizer of a real size

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def byte_level_bpe_tokenizer(vocab_size: int = 128_256, specials: int = 256) -> Any:
    """A byte-level BPE tokenizer of `vocab_size` tokens built without data, Llama 3's size by
    default (128,000 regular tokens, the last 256 ids special, a Llama 3 chat template): the
    256 byte symbols, then merges into 2- and 3-symbol tokens in a fixed order. Its splits are
    not a trained model's, but its vocabulary, its special tokens and every JSON character are
    real, which is what decoding speed and answer constraints depend on."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    common = [c for c in alphabet if c.isascii() and c.isprintable()] + ["\u0120", "\u010a"]
    vocab: dict[str, int] = {c: i for i, c in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    regular = vocab_size - specials

    def add(left: str, right: str) -> bool:
        token = left + right
        if token in vocab:
            return True
        if len(vocab) >= regular:
            return False
        vocab[token] = len(vocab)
        merges.append((left, right))
        return True

    pairs = [a + b for a in common for b in common]
    for pair in pairs:
        if not add(pair[0], pair[1]):
            break
    for pair in pairs:
        for c in common:
            if not add(pair, c):
                break
        if len(vocab) >= regular:
            break
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>"]  # fmt: skip
    names += [f"<|reserved_special_token_{k}|>" for k in range(specials - len(names))]
    model = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=names[2:],
    )
    tokenizer.add_special_tokens({"additional_special_tokens": names})
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def write_tiny_chat_llm(folder: Path, seed: int = 0, vocab_size: int = 1024) -> Path:
    """A random two-layer Llama over a small `byte_level_bpe_tokenizer` (32 special tokens, a
    Llama 3 chat template), saved as a transformers folder: a chat model whose tokenizer can
    write any JSON, so the constrained JSON answer path runs on it for real."""
    if (folder / "config.json").is_file():
        return folder
    tokenizer = byte_level_bpe_tokenizer(vocab_size, specials=32)
    model = tiny_llama(tokenizer, vocab_size, seed)
    staging = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(folder)
    return folder
