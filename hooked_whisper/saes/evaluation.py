"""What splicing an autoencoder in costs the model, on held-out clips: the next-token loss of the
clean greedy transcript with the reconstruction in place of the activation (no error term), and
the word error rate of the transcript generated that way against the clean one (and against
reference transcripts, when given). And how stable training is: which latents of one run
another run (another seed) also found, by the cosine of their decoder directions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.audio import SAMPLE_RATE, audio_clips
from hooked_whisper.metrics import normalize_text, word_error_rate
from hooked_whisper.saes.sae import SparseAutoencoder

if TYPE_CHECKING:
    from hooked_whisper.hooked_audio_model import HookedAudioModel


@dataclass
class SpliceCost:
    loss_clean: float  # mean next-token loss (nats per token) of the clean greedy transcripts
    loss_spliced: float  # the same tokens with the autoencoder spliced in
    wer_vs_clean: float  # spliced transcripts against the clean ones (corpus WER)
    wer_clean_vs_reference: float | None  # against references, when given
    wer_spliced_vs_reference: float | None
    clips: int
    tokens: int

    @property
    def delta_loss(self) -> float:
        return self.loss_spliced - self.loss_clean


def _corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word errors over reference words, summed over clips (each clip weighed by its length)."""
    words = [len(normalize_text(r)) for r in references]
    errors = sum(word_error_rate(r, h) * n for r, h, n in zip(references, hypotheses, words))
    return errors / max(sum(words), 1)


def _transcript(model: HookedAudioModel, tokens: torch.Tensor) -> str:
    row = tokens[0]
    return model.to_string(row[model.prompt_length(row) : model.real_length(row)])  # type: ignore[return-value]


@torch.no_grad()
def splice_cost(
    model: HookedAudioModel,
    sae: SparseAutoencoder,
    clips: Sequence,
    references: Sequence[str] | None = None,
    hook: str | None = None,
    sample_rate: int | None = None,
    progress: bool = True,
    max_new_tokens: int | None = None,
) -> SpliceCost:
    """The cost of splicing ``sae`` in at ``hook`` (default: its ``hook_name``) on ``clips``
    (greedy transcripts of at most ``max_new_tokens``, default the decoder's context)."""
    hook = hook or sae.hook_name
    if hook is None:
        raise ValueError("the autoencoder carries no hook_name: pass hook=")
    if references is not None and len(references) != len(clips):
        raise ValueError(f"{len(references)} references for {len(clips)} clips: give one per clip")
    clean_text, spliced_text = [], []
    loss_clean = loss_spliced = 0.0
    n_tokens = 0
    for wave_ in tqdm(audio_clips(list(clips), sample_rate), desc="splice cost", disable=not progress, unit="clip"):
        mel = model.to_mel(wave_, SAMPLE_RATE)
        tokens = model.generate(mel, max_new_tokens=max_new_tokens)
        row = tokens[0]
        start, end = model.prompt_length(row), model.real_length(row)
        targets = tokens[:, start:end]
        clean = model(mel, tokens[:, : end - 1])[:, start - 1 :]
        with model.saes({hook: sae}):
            spliced = model(mel, tokens[:, : end - 1])[:, start - 1 :]
            spliced_text.append(_transcript(model, model.generate(mel, max_new_tokens=max_new_tokens)))
        clean_text.append(_transcript(model, tokens))
        loss_clean += float(torch.nn.functional.cross_entropy(clean[0], targets[0], reduction="sum"))
        loss_spliced += float(torch.nn.functional.cross_entropy(spliced[0], targets[0], reduction="sum"))
        n_tokens += targets.shape[1]
    if n_tokens == 0:
        raise ValueError(
            f"{type(model).__name__} generated no tokens after its prompt on these clips (each ended at once): "
            "splice_cost has no transcript to score; give clips with speech, or a larger max_new_tokens"
        )
    return SpliceCost(
        loss_clean=loss_clean / max(n_tokens, 1),
        loss_spliced=loss_spliced / max(n_tokens, 1),
        wer_vs_clean=_corpus_wer(clean_text, spliced_text),
        wer_clean_vs_reference=_corpus_wer(references, clean_text) if references is not None else None,
        wer_spliced_vs_reference=_corpus_wer(references, spliced_text) if references is not None else None,
        clips=len(clean_text),
        tokens=n_tokens,
    )


@torch.no_grad()
def matched_latents(sae: SparseAutoencoder, other: SparseAutoencoder, threshold: float = 0.7) -> torch.Tensor:
    """Per latent of ``sae``: whether some latent of ``other`` has a decoder direction within
    cosine ``threshold`` of its own (the stability measure AudioSAE reports across seeds)."""
    if sae.d_in != other.d_in:
        raise ValueError(f"the autoencoders read vectors of {sae.d_in} and {other.d_in}: compare two of one hook")
    mine = torch.nn.functional.normalize(sae.W_dec.float(), dim=1)
    theirs = torch.nn.functional.normalize(other.W_dec.float().to(mine.device), dim=1)
    best = torch.cat([(rows @ theirs.T).max(1).values for rows in mine.split(4096)])
    return best > threshold
