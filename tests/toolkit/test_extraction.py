"""Corpus-scale extraction through the command line, as a user runs it: one process and two
(``torchrun``, gloo on the CPU) give the same shards, index and probes; a run killed midway
resumes without redoing finished shards; other settings into the same folder are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hooked_whisper.probing import ActivationStore, train_probes
from tests.support import CLIPS, DATA, assert_close, random_whisper

BIN = Path(sys.executable).parent
HOOKS = ["encoder_blocks.1.hook_resid_post", "decoder_blocks.2.hook_resid_post"]
# torchrun gives each process one thread; the single-process runs use one too, so that the
# kernels, and so the floats, are the same.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Five clips with labels (card-game recordings against audiobook ones) and groups (one per
    file), and one row whose file does not exist: three shards of two rows."""
    folder = tmp_path_factory.mktemp("manifest")
    rows = ["path\tlabel\tgroup"]
    for clip in CLIPS[2:5] + CLIPS[6:8]:
        kind = "cards" if clip.startswith("cards") else "other"
        rows.append(f"{DATA / clip}\t{kind}\t{clip}")
    rows.insert(3, "missing.wav\tcards\tnone")
    path = folder / "clips.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def command(manifest: Path, out: Path, model: str = "tiny.en") -> list[str]:
    """The README's command (with the model and hooks of this test)."""
    args = ["extract", str(manifest), "--model", model, "--hooks", *HOOKS, "--out", str(out)]
    return [str(BIN / "hooked-whisper"), *args, "--batch-size", "2", "--shard-size", "2"]


def extract_here(model, manifest: Path, out: Path) -> None:
    """What the command does, in this process (one thread, like each torchrun process)."""
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.probing import extract_activations

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = dict(decoder_pooling="prompt_end", batch_size=2, shard_size=2, progress=False)
        extract_activations(model, Manifest.read(manifest), HOOKS, out_dir=out, **settings)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single(manifest, tmp_path_factory, tiny_en) -> Path:
    out = tmp_path_factory.mktemp("single") / "acts"
    extract_here(tiny_en, manifest, out)
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A random Whisper with tiny.en's vocabulary, saved as a checkpoint folder that ``--model``
    reads: splitting a corpus over processes is the same for any weights, at a fraction of the cost."""
    from weights_conversion import save_hf_folder

    model = random_whisper(d_model=64, n_heads=2, d_head=32, n_encoder_layers=2, n_decoder_layers=3, d_vocab=51864)
    return save_hf_folder(model, tmp_path_factory.mktemp("toy"))


def test_two_processes_equal_one(manifest, toy, tmp_path):
    from hooked_whisper import HookedWhisper

    extract_here(HookedWhisper.from_pretrained(toy), manifest, tmp_path / "single")
    single, out = tmp_path / "single", tmp_path / "acts"
    torchrun = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--no-python"]
    done = subprocess.run(torchrun + command(manifest, out, model=str(toy)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = ActivationStore.open(single), ActivationStore.open(out)
    for hook in HOOKS:
        assert one[hook].shape == (5, 64) and torch.equal(one[hook], two[hook]), hook
    assert (
        json.loads((single / "index.json").read_text())["rows"] == json.loads((out / "index.json").read_text())["rows"]
    )
    missing = str(manifest.parent / "missing.wav")
    assert list(one.failed) == [missing] and "no audio file" in one.failed[missing]
    assert one.labels == ["cards"] * 3 + ["other"] * 2 and one.n == 5
    probes = [
        train_probes(store, store.labels, groups=store.groups, folds=2, l2=1.0, progress=False) for store in (one, two)
    ]
    assert [r.accuracy for r in probes[0].results] == [r.accuracy for r in probes[1].results]


def test_a_killed_run_resumes_without_redoing_finished_shards(manifest, single, tmp_path, tiny_en):
    out = tmp_path / "acts"
    run = subprocess.Popen(command(manifest, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shard-00000.safetensors"
    deadline = time.monotonic() + 120
    while not first.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.kill()
    run.wait()
    assert first.exists() and not (out / "index.json").exists(), "the run should have stopped after its first shard"
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    (out / "shard-00002.safetensors.tmp").write_bytes(b"half a shard")  # what a crash mid-write leaves
    extract_here(tiny_en, manifest, out)  # the rerun (the same settings, so it resumes)
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    resumed, whole = ActivationStore.open(out), ActivationStore.open(single)
    for hook in HOOKS:
        assert torch.equal(resumed[hook], whole[hook])
    assert len(list(out.glob("shard-*.safetensors"))) == 3


def test_other_settings_into_the_same_folder_are_refused(manifest, single, tiny_en):
    from hooked_whisper.extraction import Manifest
    from hooked_whisper.probing import extract_activations

    with pytest.raises(ValueError, match=r"other settings \(.*hooks: \['encoder_blocks.1"):
        extract_activations(tiny_en, Manifest.read(manifest), HOOKS[:1], out_dir=single, batch_size=2, shard_size=2)


# ---------------------------------------------------------------- a rerun never resumes wrong
ENCODER_HOOK = "encoder_blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def reader():
    """What a rerun must notice (audio, hooks, weights, damaged shards) does not depend on the
    weights: a small random model reads the clips in a fraction of tiny.en's time."""
    return random_whisper(d_model=64, n_heads=2, d_head=32, n_encoder_layers=2, n_decoder_layers=1, d_vocab=51864)


def extract_two(model, folder: Path, clips, **kwargs):
    """Two clips, one shard each, an encoder hook only (fast)."""
    from hooked_whisper.probing import extract_activations

    settings = dict(batch_size=1, shard_size=1, progress=False) | kwargs
    return extract_activations(model, clips, [ENCODER_HOOK], out_dir=folder, **settings)


@pytest.fixture
def two_files(tmp_path) -> list[Path]:
    files = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for f, src in zip(files, ["cards_001.wav", "goforward.wav"]):
        f.write_bytes((DATA / src).read_bytes())
    return files


def test_a_replaced_audio_file_is_recomputed(reader, two_files, tmp_path):
    out = tmp_path / "acts"
    before = extract_two(reader, out, two_files)[ENCODER_HOOK]
    two_files[1].write_bytes((DATA / "librivox_0880.wav").read_bytes())  # same path, other audio
    with pytest.warns(UserWarning, match=r"recomputing 1 of the 2 shards .*\(1 audio changed\)"):
        after = extract_two(reader, out, two_files)[ENCODER_HOOK]
    fresh = extract_two(reader, tmp_path / "fresh", two_files)[ENCODER_HOOK]
    assert torch.equal(after, fresh) and torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_active_hooks_are_refused_or_recorded(reader, two_files, tmp_path):
    out = tmp_path / "acts"
    plain = extract_two(reader, out, two_files)[ENCODER_HOOK]

    def ablate(x, hook):
        return torch.zeros_like(x)

    with reader.hooks(fwd_hooks=[("encoder_blocks.0.hook_resid_post", ablate)]):
        with pytest.raises(
            ValueError, match=r"1 hook\(s\) active \(encoder_blocks.0.hook_resid_post: ablate\).*allow_hooks=True"
        ):
            extract_two(reader, out, two_files)
        with pytest.warns(UserWarning, match=r"recomputing 2 of the 2 shards .*\(2 active hooks changed\)"):
            hooked = extract_two(reader, out, two_files, allow_hooks=True)[ENCODER_HOOK]
    assert not torch.equal(hooked, plain)
    with pytest.warns(UserWarning, match=r"2 active hooks changed"):  # the hooks are gone: recomputed
        assert torch.equal(extract_two(reader, out, two_files)[ENCODER_HOOK], plain)


def test_a_weight_edit_is_recomputed(reader, two_files, tmp_path):
    out = tmp_path / "acts"
    plain = extract_two(reader, out, two_files)[ENCODER_HOOK]
    weight = reader.encoder_blocks[0].mlp.W_in
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(0.5)
        with pytest.warns(UserWarning, match=r"\(2 model weights changed\)"):
            edited = extract_two(reader, out, two_files)[ENCODER_HOOK]
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert not torch.equal(edited, plain)


def flip_a_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # in the last tensor's data, past the header
    path.write_bytes(bytes(data))


def test_damaged_shards_are_refused_by_the_store_and_recomputed_by_a_rerun(reader, two_files, tmp_path):
    from hooked_whisper.probing import ActivationStore

    out = tmp_path / "acts"
    plain = extract_two(reader, out, two_files)[ENCODER_HOOK]
    shard = out / "shard-00001.safetensors"
    flip_a_data_byte(shard)
    with pytest.raises(ValueError, match=r"shard-00001.safetensors fails its checksum"):
        ActivationStore.open(out)
    with pytest.raises(ValueError, match=r"shard-00001.safetensors fails its checksum"):
        ActivationStore.open(out, verify=False)[ENCODER_HOOK]
    with pytest.warns(UserWarning, match=r"recomputing 1 of the 2 shards .*failing its checksum"):
        assert torch.equal(extract_two(reader, out, two_files)[ENCODER_HOOK], plain)
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match=r"shard-00001.safetensors is not a readable safetensors shard.*truncated"):
        ActivationStore.open(out)


def test_an_extraction_where_every_clip_fails_says_so(reader, tmp_path):
    with pytest.raises(ValueError, match=r"every clip failed \(2 of 2\).*no audio file"):
        extract_two(reader, tmp_path / "acts", [tmp_path / "none1.wav", tmp_path / "none2.wav"])


def test_batch_size_zero_is_refused(tiny_en, two_files, tmp_path, capsys):
    from hooked_whisper.cli import main
    from hooked_whisper.probing import extract_activations

    for out_dir in (None, tmp_path / "acts"):
        with pytest.raises(ValueError, match="batch_size must be a whole number of clips, 1 or more; got 0"):
            extract_activations(tiny_en, two_files, [ENCODER_HOOK], batch_size=0, out_dir=out_dir)
    manifest = tmp_path / "clips.txt"
    manifest.write_text("\n".join(str(f) for f in two_files))
    with pytest.raises(SystemExit) as done:
        main(["extract", str(manifest), "--hooks", ENCODER_HOOK, "--out", str(tmp_path / "cli"), "--batch-size", "0"])
    assert done.value.code == 2 and "--batch-size: must be 1 or more, got 0" in capsys.readouterr().err


def test_batched_decoder_positions_are_per_row(tiny_en, float32_spread):
    """Rows of a batch end at different lengths: a position counts from each row's own end, so
    a batch of two equals two batches of one, and a position past a row's end is an error."""
    from hooked_whisper.probing import extract_activations

    clips = [DATA / "cards_001.wav", DATA / "librivox_0880.wav"]  # short and long transcripts
    hook = "decoder_blocks.3.hook_resid_post"
    for position in (-2, 2):  # from each row's own end, and from its start
        one = extract_activations(tiny_en, clips, [hook], decoder_pooling=position, batch_size=1, progress=False)
        two = extract_activations(tiny_en, clips, [hook], decoder_pooling=position, batch_size=2, progress=False)
        assert_close(two[hook], one[hook], float32_spread, f"position {position}")  # batched kernels differ in ulps
    n_short = len(tiny_en.run_with_cache(clips[0], names_filter=["hook_tokens"])[1]["hook_tokens"][0])
    for batch_size in (1, 2):
        with pytest.raises(ValueError, match=rf"decoder position {n_short} is outside this clip's {n_short} tokens"):
            extract_activations(tiny_en, clips, [hook], decoder_pooling=n_short, batch_size=batch_size, progress=False)


def test_shards_from_before_checksums_are_read_with_a_warning_and_recomputed_on_rerun(reader, two_files, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hooked_whisper.probing import ActivationStore

    out = tmp_path / "acts"
    plain = extract_two(reader, out, two_files)[ENCODER_HOOK]
    shard = out / "shard-00000.safetensors"
    with safe_open(str(shard), "pt") as f:
        tensors, failed = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["failed"]
    save_file(tensors, str(shard), metadata={"failed": failed})  # what the previous version wrote
    with pytest.warns(UserWarning, match="shard-00000.safetensors was written without checksums"):
        assert torch.equal(ActivationStore.open(out)[ENCODER_HOOK], plain)
    with pytest.warns(UserWarning, match=r"recomputing 1 of the 2 shards .*\(1 written by an older version\)"):
        assert torch.equal(extract_two(reader, out, two_files)[ENCODER_HOOK], plain)


def test_arrays_are_extracted_at_their_sample_rate_and_a_new_rate_is_recomputed(reader, tmp_path):
    import torchaudio.functional

    from hooked_whisper import load_audio
    from hooked_whisper.probing import extract_activations

    at_8k = [
        torchaudio.functional.resample(load_audio(DATA / c), 16000, 8000) for c in ("cards_001.wav", "goforward.wav")
    ]
    out = tmp_path / "acts"
    sharded = extract_two(reader, out, at_8k, sample_rate=8000)[ENCODER_HOOK]
    in_memory = extract_activations(reader, at_8k, [ENCODER_HOOK], sample_rate=8000, progress=False)[ENCODER_HOOK]
    assert torch.equal(sharded, in_memory)
    with pytest.warns(UserWarning, match=r"recomputing 2 of the 2 shards .*\(2 audio changed\)"):
        extract_two(reader, out, at_8k, sample_rate=16000)  # the same samples read at another rate
