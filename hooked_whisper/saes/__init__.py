"""Sparse autoencoders on speech: the autoencoder (``SparseAutoencoder``), splicing by hook name
(``model.saes``), training on stored activations with EleutherAI's ``sparsify``
(``train_sae``), the native, sae-lens and AudioSAE formats, the cost of splicing, steering, and
feature dashboards. Nothing here imports ``sparsify`` until a training starts."""

from hooked_whisper.saes.dashboard import feature_dashboard
from hooked_whisper.saes.evaluation import SpliceCost, matched_latents, splice_cost
from hooked_whisper.saes.formats import export_sae_lens, import_sae_lens, load_audiosae, load_sae, save_sae
from hooked_whisper.saes.sae import ARCHITECTURES, SparseAutoencoder
from hooked_whisper.saes.splice import HookedSAE, splice_saes
from hooked_whisper.saes.steering import steering_hooks
from hooked_whisper.saes.training import SAEMetrics, TrainConfig, TrainingRun, evaluate_sae, train_sae

__all__ = [
    "ARCHITECTURES",
    "HookedSAE",
    "SAEMetrics",
    "SparseAutoencoder",
    "SpliceCost",
    "TrainConfig",
    "TrainingRun",
    "evaluate_sae",
    "export_sae_lens",
    "feature_dashboard",
    "import_sae_lens",
    "load_audiosae",
    "load_sae",
    "matched_latents",
    "save_sae",
    "splice_cost",
    "splice_saes",
    "steering_hooks",
    "train_sae",
]
