"""Conditioning: the prompt through Llama and CLIP, the image through bucket, VAE and SigLIP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from PIL import Image, ImageOps

from .models import ModelSet

if TYPE_CHECKING:
    from .controls import JobImages, SectionSchedule
    from .settings import Settings

# FramePack's 640 buckets as (height, width); every side is a multiple of 16 and the areas are close to 640².
BUCKETS_640: tuple[tuple[int, int], ...] = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # fmt: skip

LLAMA_MAX_TOKENS = 256
TEXT_LENGTH = 512  # the transformer's fixed text length (padded or cropped, with a mask)
CLIP_MAX_TOKENS = 77


def buckets(resolution: int = 640) -> list[tuple[int, int]]:
    """The aspect buckets for a target resolution: FramePack's 640 set, scaled to `resolution`² area."""
    if resolution == 640:
        return list(BUCKETS_640)
    scale = resolution / 640
    return [(max(16, round(h * scale / 16) * 16), max(16, round(w * scale / 16) * 16)) for h, w in BUCKETS_640]


def nearest_bucket(height: int, width: int, resolution: int = 640) -> tuple[int, int]:
    """The bucket (height, width) whose aspect is nearest the image's; on a tie the later bucket wins, as in FramePack."""
    best, best_metric = None, float("inf")
    for bucket_h, bucket_w in buckets(resolution):
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best, best_metric = (bucket_h, bucket_w), metric
    return best


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover (width, height) with a Lanczos resize, then crop the centre. An image of that size is kept as is."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(image)
    scale = max(width / pil.width, height / pil.height)
    resized_w, resized_h = round(pil.width * scale), round(pil.height * scale)
    pil = pil.resize((resized_w, resized_h), Image.LANCZOS)
    box = ((resized_w - width) / 2, (resized_h - height) / 2, (resized_w + width) / 2, (resized_h + height) / 2)
    return np.array(pil.crop(box))


@dataclass
class PromptEmbeds:
    """One prompt's conditioning: Llama states (template cropped, before padding) and the CLIP-L pooler."""

    llama: torch.Tensor  # (1, L, D)
    llama_mask: torch.Tensor  # (1, L), int64 ones
    clip_pooler: torch.Tensor  # (1, D_clip)

    def cpu(self) -> PromptEmbeds:
        return PromptEmbeds(self.llama.cpu(), self.llama_mask.cpu(), self.clip_pooler.cpu())

    def zeros_like(self) -> PromptEmbeds:
        return PromptEmbeds(torch.zeros_like(self.llama), self.llama_mask, torch.zeros_like(self.clip_pooler))

    def blend(self, other: PromptEmbeds, weight: float) -> PromptEmbeds:
        """(1 - weight) of this prompt and `weight` of `other`; the shorter Llama states are zero-padded, as the
        transformer sees them, and the result attends to the tokens of both."""
        length = max(self.llama.shape[1], other.llama.shape[1])
        ours, theirs = self.padded(length)[0], other.padded(length)[0]
        llama = torch.lerp(ours, theirs, weight)
        mask = torch.ones(llama.shape[:2], dtype=self.llama_mask.dtype, device=llama.device)
        return PromptEmbeds(llama, mask, torch.lerp(self.clip_pooler, other.clip_pooler, weight))

    def padded(self, length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
        """The Llama states zero-padded (or cropped) to `length`, with a boolean mask of the real tokens."""
        batch, tokens, dim = self.llama.shape
        if tokens >= length:
            return self.llama[:, :length], torch.ones(batch, length, dtype=torch.bool, device=self.llama.device)
        states = self.llama.new_zeros(batch, length, dim)
        states[:, :tokens] = self.llama
        mask = torch.zeros(batch, length, dtype=torch.bool, device=self.llama.device)
        mask[:, :tokens] = True
        return states, mask


@torch.no_grad()
def encode_prompt(models: ModelSet, prompt: str) -> PromptEmbeds:
    """HunyuanVideo's prompt conditioning: templated Llama, 3rd-from-last hidden state, template cropped; CLIP pooler."""
    crop_start = DEFAULT_PROMPT_TEMPLATE["crop_start"]
    llama_inputs = models.tokenizer(
        [DEFAULT_PROMPT_TEMPLATE["template"].format(prompt)],
        padding="max_length",
        max_length=LLAMA_MAX_TOKENS + crop_start,
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    encoder = models.text_encoder
    input_ids = llama_inputs.input_ids.to(encoder.device)
    attention_mask = llama_inputs.attention_mask.to(encoder.device)
    attended = int(attention_mask.sum())
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-3]
    llama = hidden[:, crop_start:attended]
    llama_mask = attention_mask[:, crop_start:attended]

    clip_ids = models.tokenizer_2(
        [prompt], padding="max_length", max_length=CLIP_MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    pooler = models.text_encoder_2(clip_ids.to(models.text_encoder_2.device), output_hidden_states=False).pooler_output
    return PromptEmbeds(llama=llama, llama_mask=llama_mask, clip_pooler=pooler)


def prompt_token_count(models: ModelSet, prompt: str) -> int:
    """How many Llama tokens the prompt has; past LLAMA_MAX_TOKENS the rest is cut off."""
    return len(models.tokenizer(prompt, add_special_tokens=False).input_ids)


def image_to_pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 to the VAE's input: float in [-1, 1], shape (1, 3, 1, H, W)."""
    pixels = torch.from_numpy(image).float() / 127.5 - 1
    return pixels.permute(2, 0, 1)[None, :, None]


@torch.no_grad()
def encode_start_latent(models: ModelSet, image: np.ndarray) -> torch.Tensor:
    """The start frame's latent: VAE posterior mean × scaling factor, float32 on the CPU."""
    vae = models.vae
    pixels = image_to_pixels(image).to(device=vae.device, dtype=vae.dtype)
    latent = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    return latent.float().cpu()


@torch.no_grad()
def encode_frames(models: ModelSet, frames: np.ndarray) -> torch.Tensor:
    """Latents of a clip of uint8 frames (T, H, W, 3): VAE posterior mean × scaling factor, (1, 16, (T+3)//4, h, w),
    float32 on the CPU. The first frame gets a latent of its own, as in every HunyuanVideo clip."""
    vae = models.vae
    pixels = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    latent = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode() * vae.config.scaling_factor
    return latent.float().cpu()


@torch.no_grad()
def encode_image_embeds(models: ModelSet, image: np.ndarray) -> torch.Tensor:
    """SigLIP's last hidden state of the (resized) start image."""
    encoder = models.image_encoder
    inputs = models.feature_extractor.preprocess(images=image, return_tensors="pt")
    inputs = inputs.to(device=encoder.device, dtype=encoder.dtype)
    return encoder(**inputs).last_hidden_state


@dataclass
class Conditioning:
    """All a job's sampler needs besides the latents: each prompt a section uses (encoded once per job), the
    negative prompt, the image embedding, the start, end and keyframe latents, and the section schedule.

    `section` is the one place where a section's conditioning is decided.
    """

    embeds: dict[str, PromptEmbeds]  # by prompt text
    section_prompts: tuple[str, ...]  # the governing prompt of each section, in time order
    negative: PromptEmbeds
    image_embeds: torch.Tensor
    start_latent: torch.Tensor
    keyframe_latents: list[torch.Tensor]
    end_latent: torch.Tensor | None  # already times the end strength
    schedule: SectionSchedule
    blend_sections: int = 0  # sections over which a new prompt fades in (0: it applies at once)

    def section(self, generation_index: int) -> tuple[PromptEmbeds, torch.Tensor]:
        """The prompt embeddings and the start-slot latent of the section generated `generation_index`-th."""
        t = self.schedule.time_index(generation_index)
        slot = self.schedule.start_slot[t]
        start_slot = self.start_latent if slot < 0 else self.keyframe_latents[slot]
        return self._prompt(t), start_slot

    def _prompt(self, t: int) -> PromptEmbeds:
        text = self.section_prompts[t]
        change = t  # the first section of this prompt's run
        while change > 0 and self.section_prompts[change - 1] == text:
            change -= 1
        if change == 0 or t - change >= self.blend_sections:
            return self.embeds[text]
        # The k-th section after a change is (k+1)/(K+1) of the way from the previous prompt to the new one.
        weight = (t - change + 1) / (self.blend_sections + 1)
        return self.embeds[self.section_prompts[change - 1]].blend(self.embeds[text], weight)


def prompt_texts(settings: Settings, schedule: SectionSchedule) -> list[str]:
    """Every prompt a job encodes: each one some section uses, then the negative prompt when real CFG uses it
    (cfg != 1), else the base prompt (its zeros, shaped like it, stand in for the negative, as in FramePack)."""
    texts = [settings.prompt if k < 0 else settings.prompts[k][1] for k in schedule.prompt_index]
    return list(dict.fromkeys([*texts, settings.negative_prompt if settings.cfg != 1 else settings.prompt]))


@torch.no_grad()
def encode_conditioning(
    models: ModelSet,
    settings: Settings,
    images: JobImages,
    schedule: SectionSchedule,
    embeds: dict[str, PromptEmbeds] | None = None,
) -> Conditioning:
    """Encode a job's inputs: the prompts of `prompt_texts` (given as `embeds`, or encoded here, each once), the
    start image through SigLIP and the VAE, and the end frame and keyframes through the VAE."""
    if embeds is None:
        embeds = {text: encode_prompt(models, text) for text in prompt_texts(settings, schedule)}
    texts = tuple(settings.prompt if k < 0 else settings.prompts[k][1] for k in schedule.prompt_index)
    negative = embeds[settings.negative_prompt] if settings.cfg != 1 else embeds[settings.prompt].zeros_like()
    end_latent = None
    if images.end is not None:
        end_latent = encode_start_latent(models, images.end) * settings.end_strength
    return Conditioning(
        embeds={text: embeds[text] for text in texts},
        section_prompts=texts,
        negative=negative,
        image_embeds=encode_image_embeds(models, images.start),
        start_latent=encode_start_latent(models, images.start),
        keyframe_latents=[encode_start_latent(models, image) for _, image in images.keyframes],
        end_latent=end_latent,
        schedule=schedule,
        blend_sections=settings.prompt_blend_sections,
    )


class ImageError(ValueError):
    """The input image cannot be used; the message says why in one line."""


def load_image(source: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Any image a user may give (path, PIL image or array) as RGB uint8 HxWx3.

    Photos are turned upright by their EXIF orientation, transparency is composited on white, animated
    images give their first frame and 16-bit or palette images are converted.
    """
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ImageError(f"expected an HxWx3 or HxWx4 image array, got shape {array.shape}")
        if array.dtype != np.uint8:
            raise ImageError(f"expected a uint8 image array, got {array.dtype}")
        pil = Image.fromarray(array)
    elif isinstance(source, Image.Image):
        pil = source
    else:
        try:
            pil = Image.open(source)
            pil.load()
        except FileNotFoundError:
            raise ImageError(f"image file not found: {Path(str(source)).name}") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{Path(str(source)).name} has too many pixels to read safely ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            # The library's message may name the full path; the file's name is enough.
            reason = str(exc).replace(str(source), Path(str(source)).name)
            raise ImageError(f"cannot read {Path(str(source)).name} as an image ({reason})") from None
    pil = ImageOps.exif_transpose(pil)
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale 0..65535 to 0..255 rather than clipping.
        pil = Image.fromarray(np.clip(np.asarray(pil, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8))
    if pil.mode in ("RGBA", "LA", "PA") or (pil.mode == "P" and "transparency" in pil.info):
        rgba = pil.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pil = Image.alpha_composite(white, rgba)
    return np.array(pil.convert("RGB"))


def target_size(image: np.ndarray, resolution: int, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """(height, width) of the video: the explicit size if given, else the nearest bucket for `resolution`."""
    if height is not None and width is not None:
        return height, width
    return nearest_bucket(image.shape[0], image.shape[1], resolution)
