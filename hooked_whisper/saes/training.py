"""Training a sparse autoencoder on speech activations of one hook, from an activation store.

Frames are the tokens: every position of every clip's activation, as ``extract_activations(...,
pooling="none")`` keeps them (the zero padding up to 30 s is already left out there). Clips are
streamed: shards are visited in a shuffled order, a few at a time, and the frames of those
shards' clips are shuffled together, so a batch mixes clips of different shards and the corpus
never has to fit in memory. Every ``held_out_every``-th clip (by manifest row) is kept for the
metrics. The architecture and loss are EleutherAI's ``sparsify.SparseCoder``: TopK with the AuxK
loss on latents that have not fired for ``dead_after_frames`` frames, a unit-norm decoder whose
gradient is kept orthogonal to it, Adam at sparsify's default rate. A checkpoint (weights,
optimizer, dead-latent counters and the position in the stream) is written every
``checkpoint_every`` steps: a rerun into the same folder resumes where it stopped, on the same
batches. Under ``torchrun`` each process reads every buffer and trains on its own share of the
batches, and the gradients are averaged (PyTorch's DistributedDataParallel, as sparsify's own
trainer does); only the first process writes checkpoints. The sparse decoder kernel sparsify
picks on a machine with a GPU is Triton's: train on the GPU there.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from hooked_whisper.probing import ActivationStore, ShardedActivationStore
from hooked_whisper.saes.sae import SparseAutoencoder

if TYPE_CHECKING:
    from sparsify import SparseCoder

CHECKPOINT = "checkpoint.pt"
MEMORY_SHARD = 64  # clips per pseudo-shard of an in-memory store


@dataclass
class TrainConfig:
    expansion_factor: int = 8  # latents = expansion_factor * the hook's width
    k: int = 32  # latents kept per frame
    batch_frames: int = 4096
    lr: float | None = None  # None: sparsify's default for Adam, 2e-4 / sqrt(latents / 2**14)
    auxk_alpha: float = 1 / 32  # weight of the AuxK loss (the TopK paper's value)
    dead_after_frames: int = 1_000_000  # a latent silent for this many frames counts as dead
    epochs: int = 1
    shards_per_buffer: int = 4  # shards whose clips' frames are shuffled together
    held_out_every: int = 10  # every n-th clip (by manifest row) is held out for the metrics
    seed: int = 0
    checkpoint_every: int = 200  # steps


@dataclass
class SAEMetrics:
    fvu: float  # fraction of variance unexplained on the held-out frames
    l0: float  # mean latents active per held-out frame
    dead_fraction: float  # latents that fire on no held-out frame
    frames: int  # held-out frames measured


@dataclass
class TrainingRun:
    sae: SparseAutoencoder
    metrics: SAEMetrics  # on the held-out clips
    steps: int
    frames: int  # frames trained on (all epochs)
    seconds: float  # time in the training loop of this call (a resumed run counts its own part)
    frames_per_second: float
    dead_in_training: float  # share of latents silent for dead_after_frames at the end of training
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, training FVU)


class FrameStream:
    """The frames of ``hook`` in ``store``, training and held-out clips apart, streamed shard by shard."""

    def __init__(self, store: ActivationStore | str | Path, hook: str, config: TrainConfig):
        self.store = ActivationStore.open(store) if isinstance(store, (str, Path)) else store
        self.store._check(hook)
        if hook not in self.store.unpooled:
            raise ValueError(
                f"the store holds {hook} pooled, one vector per clip; an autoencoder trains on frames: extract it "
                "with pooling='none' (decoder_pooling='none' for a decoder hook)"
            )
        self.hook, self.config = hook, config
        if isinstance(self.store, ShardedActivationStore):
            self.n_shards = self.store.shard_count
        else:
            self.n_shards = math.ceil(self.store.n / MEMORY_SHARD)
        if self.n_shards == 0:
            raise ValueError("the store holds no clips")

    def shard(self, index: int) -> tuple[list[int], list[torch.Tensor]]:
        if isinstance(self.store, ShardedActivationStore):
            return self.store.shard_rows(self.hook, index)
        start = index * MEMORY_SHARD
        rows = self.store.rows(self.hook)[start : start + MEMORY_SHARD]
        return list(range(start, start + len(rows))), rows

    def held_out(self, row: int) -> bool:
        every = self.config.held_out_every
        return every > 0 and row % every == every - 1

    def shard_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        return torch.randperm(self.n_shards, generator=generator).tolist()

    def buffers(self, epoch: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(buffer index, frames)``: the training frames of ``shards_per_buffer`` shards, shuffled."""
        order = self.shard_order(epoch)
        per = self.config.shards_per_buffer
        for index, start in enumerate(range(0, len(order), per)):
            yield index, self._buffer(epoch, index, order[start : start + per], held_out=False)

    def _buffer(self, epoch: int, index: int, shards: list[int], held_out: bool) -> torch.Tensor:
        parts = []
        for shard in shards:
            rows, tensors = self.shard(shard)
            parts += [t.float() for row, t in zip(rows, tensors) if self.held_out(row) == held_out]
        if not parts:
            return torch.empty(0)
        frames = torch.cat([p.flatten(1) for p in parts])  # a per-head hook's heads become one vector
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch * 10_007 + index)
        return frames[torch.randperm(len(frames), generator=generator)]

    def held_out_frames(self) -> Iterator[torch.Tensor]:
        for shard in range(self.n_shards):
            frames = self._buffer(0, shard, [shard], held_out=True)
            if len(frames):
                yield frames

    def width(self) -> int:
        for shard in range(self.n_shards):
            _, tensors = self.shard(shard)
            if tensors:
                return tensors[0].flatten(1).shape[-1]
        raise ValueError("the store holds no clips")


def sparse_coder_class():
    """``sparsify.SparseCoder``, imported on first use (sparsify imports transformers). Its
    sparse decoder runs a Triton kernel when Triton is installed, which needs a GPU: without
    one the eager kernel is chosen (sparsify reads that choice when it is first imported)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # sparsify prints which kernel it picked
            from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as err:
        raise ImportError(
            "training an autoencoder needs EleutherAI's sparsify: pip install 'hooked-whisper[saes]' "
            "(or pip install eai-sparsify)"
        ) from err
    return SparseCoder, SparseCoderConfig


def train_sae(
    store: ActivationStore | str | Path,
    hook: str,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> TrainingRun:
    """Train a TopK autoencoder on the frames of ``hook`` in ``store`` (an ``ActivationStore`` or
    an extraction folder written with ``pooling="none"``), and measure it on the held-out clips.

    With ``out_dir`` a checkpoint is kept there and the result saved as ``out_dir/sae``
    (``load_sae``); a rerun into the same folder with the same settings resumes.
    ``max_steps`` stops early (the checkpoint then resumes from there)."""
    from hooked_whisper.extraction import distributed

    config = config or TrainConfig()
    stream = FrameStream(store, hook, config)
    SparseCoder, SparseCoderConfig = sparse_coder_class()
    rank, world, _ = distributed()
    d_in = stream.width()
    torch.manual_seed(config.seed)
    coder = SparseCoder(
        d_in, SparseCoderConfig(expansion_factor=config.expansion_factor, k=config.k), device=device or "cpu"
    )
    lr = config.lr or 2e-4 / math.sqrt(coder.num_latents / 2**14)
    trained = coder
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(coder)  # type: ignore[assignment]
    optimizer = torch.optim.Adam(coder.parameters(), lr=lr)
    position = {"epoch": 0, "buffer": 0, "batch": 0, "step": 0, "frames": 0}
    since_fired = torch.zeros(coder.num_latents, dtype=torch.long, device=coder.device)
    history: list[tuple[int, float]] = []
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None and (folder / CHECKPOINT).is_file():
        position, since_fired, history = _resume(folder, hook, config, coder, optimizer, d_in)
    frames_done_here, started = 0, time.perf_counter()
    bar = tqdm(desc=f"training an autoencoder on {hook}", unit="frame", unit_scale=True, disable=not progress)
    stopped = False
    for epoch in range(position["epoch"], config.epochs):
        for index, frames in stream.buffers(epoch):
            if epoch == position["epoch"] and index < position["buffer"]:
                continue  # trained on before the checkpoint
            starts = range(0, len(frames), config.batch_frames)
            # Every process reads the same buffer and trains on its own batches of it; all run
            # the same number of steps, as DistributedDataParallel needs.
            starts = starts[rank : len(starts) - len(starts) % world : world]
            for batch_index, start in enumerate(starts):
                if (epoch, index) == (position["epoch"], position["buffer"]) and batch_index < position["batch"]:
                    continue
                if max_steps is not None and position["step"] >= max_steps:
                    stopped = True
                    break
                batch = frames[start : start + config.batch_frames].to(coder.device)
                out = trained(batch, dead_mask=since_fired > config.dead_after_frames)
                (out.fvu + config.auxk_alpha * out.auxk_loss).backward()
                coder.remove_gradient_parallel_to_decoder_directions()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                coder.set_decoder_norm_to_unit_norm()
                since_fired += len(batch)
                since_fired[out.latent_indices.flatten()] = 0
                if world > 1:  # a latent that fired on any process is alive
                    torch.distributed.all_reduce(since_fired, op=torch.distributed.ReduceOp.MIN)
                position.update(epoch=epoch, buffer=index, batch=batch_index + 1)
                position["step"] += 1
                position["frames"] += len(batch) * world
                frames_done_here += len(batch) * world
                history.append((position["step"], out.fvu.item()))
                bar.update(len(batch) * world)
                bar.set_postfix(fvu=f"{history[-1][1]:.3f}")
                if folder is not None and rank == 0 and position["step"] % config.checkpoint_every == 0:
                    _checkpoint(folder, hook, config, coder, optimizer, position, since_fired, history, d_in)
            if stopped:
                break
            position.update(epoch=epoch, buffer=index + 1, batch=0)
        if stopped:
            break
        position.update(epoch=epoch + 1, buffer=0, batch=0)
    seconds = time.perf_counter() - started
    bar.close()
    metadata = {"trained_frames": position["frames"], "steps": position["step"], "train_config": asdict(config)}
    sae = SparseAutoencoder.from_sparse_coder(coder, hook, **metadata)
    if folder is not None and rank == 0:
        _checkpoint(folder, hook, config, coder, optimizer, position, since_fired, history, d_in)
        from hooked_whisper.saes.formats import save_sae

        save_sae(sae, folder / "sae")
    return TrainingRun(
        sae=sae,
        metrics=evaluate_sae(sae, stream.held_out_frames()),
        steps=position["step"],
        frames=position["frames"],
        seconds=seconds,
        frames_per_second=frames_done_here / seconds if seconds > 0 else float("nan"),
        dead_in_training=float((since_fired > config.dead_after_frames).float().mean()),
        history=history,
    )


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, frames: Iterator[torch.Tensor] | torch.Tensor) -> SAEMetrics:
    """FVU, L0 and the share of latents that never fire, over ``frames`` (``[n, d_in]`` tensors,
    or one): FVU is the summed squared error over the summed squared distance to the frames' mean."""
    chunks = [frames] if isinstance(frames, torch.Tensor) else frames
    n, total, total_sq, error, active = 0, 0.0, 0.0, 0.0, 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for chunk in chunks:
        x = chunk.to(sae.W_enc.device, sae.W_enc.dtype)
        acts = sae.encode(x)
        error += float((sae.decode(acts) - x).double().pow(2).sum())
        total = total + x.double().sum(0)
        total_sq += float(x.double().pow(2).sum())
        nonzero = acts != 0
        active += float(nonzero.sum())
        fired |= nonzero.any(0).cpu()
        n += len(x)
    if n == 0:
        raise ValueError("no held-out frames to measure: lower held_out_every, or pass frames")
    variance = total_sq - float((total * total).sum()) / n  # sum of squared distances to the mean
    return SAEMetrics(error / variance, active / n, float((~fired).float().mean()), n)


def _checkpoint(folder, hook, config, coder, optimizer, position, since_fired, history, d_in) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "hook": hook,
        "d_in": d_in,
        "config": asdict(config),
        "coder": coder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": dict(position),
        "since_fired": since_fired,
        "history": torch.tensor(history, dtype=torch.float64).reshape(-1, 2),
    }
    tmp = folder / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / CHECKPOINT)  # a crash mid-write leaves the previous checkpoint whole


def _resume(folder: Path, hook: str, config: TrainConfig, coder: SparseCoder, optimizer, d_in: int):
    state = torch.load(folder / CHECKPOINT, weights_only=True, map_location=coder.device)
    resumable = {k: v for k, v in asdict(config).items() if k not in ("epochs", "checkpoint_every")}
    saved = {k: v for k, v in state["config"].items() if k not in ("epochs", "checkpoint_every")}
    if state["hook"] != hook or state["d_in"] != d_in or saved != resumable:
        raise ValueError(
            f"{folder / CHECKPOINT} is a run on {state['hook']} with other settings ({saved}); resume it with the "
            "same hook and TrainConfig (epochs may grow), or train into a new folder"
        )
    coder.load_state_dict(state["coder"])
    optimizer.load_state_dict(state["optimizer"])
    history = [(int(s), float(f)) for s, f in state["history"].tolist()]
    return dict(state["position"]), state["since_fired"], history
