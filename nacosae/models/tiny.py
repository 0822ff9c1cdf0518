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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smoke_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return model.eval(), tokenizer


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
