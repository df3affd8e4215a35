"""Conditioning: the prompt through Llama and CLIP, the image through bucket, VAE and SigLIP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import (
    DEFAULT_PROMPT_TEMPLATE,
)

from ..controls import JobImages, SectionSchedule
from ..events import Event, Status
from ..loading import components
from ..models.components import CLIP_MAX_TOKENS, LLAMA_MAX_TOKENS, TEXT_LENGTH, ModelSet
from ..packing import LatentHistory, SectionPlan
from ..settings import Settings


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


# Encoded prompts a model set keeps, so a prompt used again does not need the text encoders (which, where RAM is
# short, must be loaded for it). A prompt's states take about 2 MB at most.
PROMPT_CACHE_SIZE = 64


def prompt_embeds(models: ModelSet, texts: list[str]) -> Iterator[Event]:
    """The prompts' conditioning, from the model set's cache or, for those it lacks, encoded now (the text
    encoders loaded for it if they are out of memory); yields a Status when that happens, returns the embeds."""
    cache = models.prompt_cache
    missing = [text for text in texts if text not in cache]
    if missing:
        if models.text_encoder is None:
            yield Status(f"Loading the text encoders for {len(missing)} new prompt(s)")
        with components(models, "text_encoder", "text_encoder_2"):
            for text in missing:
                cache[text] = encode_prompt(models, text).cpu()
    for text in texts:
        cache.move_to_end(text)
    while len(cache) > PROMPT_CACHE_SIZE:
        cache.popitem(last=False)
    return {text: cache[text] for text in texts}


def section_inputs(
    models: ModelSet, cond: Conditioning, history: LatentHistory, plan: SectionPlan
) -> dict[str, dict[str, torch.Tensor]]:
    """The transformer's inputs for one section, per pass ("positive"/"negative"): the section's prompt and
    packed context (its start slot, and the history at 1x/2x/4x) with the RoPE frame indices of everything."""
    device, dtype = models.device, models.dtype
    positive, start_slot = cond.section(plan.index)
    context = history.context(start_slot)
    shared = {
        "image_embeds": cond.image_embeds.to(device, dtype),
        "indices_latents": plan.latent_indices.to(device),
        "latents_clean": context.clean.to(device, dtype),
        "indices_latents_clean": plan.clean_indices.to(device),
        "latents_history_2x": context.history_2x.to(device, dtype),
        "indices_latents_history_2x": plan.clean_2x_indices.to(device),
        "latents_history_4x": context.history_4x.to(device, dtype),
        "indices_latents_history_4x": plan.clean_4x_indices.to(device),
    }
    inputs = {}
    for name, embeds in (("positive", positive), ("negative", cond.negative)):
        states, mask = embeds.padded()
        inputs[name] = {
            "encoder_hidden_states": states.to(device, dtype),
            "encoder_attention_mask": mask.to(device),
            "pooled_projections": embeds.clip_pooler.to(device, dtype),
            **shared,
        }
    return inputs

