"""Hugging Face ``tokenizer.json`` tokenizers through import, checkpoint, artifact, Session, CLI, server, runners.

The model is a tiny random transformers ``Mamba2ForCausalLM`` (saved with ``save_pretrained``); the tokenizer a
byte-level BPE trained here on a few strings with the ``tokenizers`` library (no download) up to the model's 300
ids, framing a prompt with ``<s>`` through its post-processor. The EOS id is the token the model greedily emits
a few steps into its continuation of the prompt (found by the imported model, then written to
``generation_config.json``), so every path's stop at EOS is observable.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("tokenizers", reason="tokenizers is not installed (pip install tokenizers==0.23.3)")
pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers==5.23.0)")

from seqedge.artifact import ArtifactError, read_manifest  # noqa: E402
from seqedge.checkpoint import CheckpointError  # noqa: E402
from seqedge.cli.main import main  # noqa: E402
from seqedge.families import import_hf  # noqa: E402
from seqedge.model import load_pretrained  # noqa: E402
from seqedge.tokenizer import ByteTokenizer  # noqa: E402
from seqedge.tokenizer_hf import HFTokenizer, TokenizerError, read_hf_tokenizer  # noqa: E402

from test_import_mamba2 import VOCAB, _hf_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "héllo the fox"
TEXTS = ["the quick brown fox jumps over the lazy dog", "def main(args): return args",
         "héllo wörld ünïcode 数字"] * 3
BOS, EOS_IN_CONFIG, PAD = 0, 1, 2          # <s>, </s>, <pad>: the trainer's first three ids
MAX_NEW = 12


def _train_tokenizer(extra_tokens: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok.add_tokens([f"extra{i}" for i in range(extra_tokens)])
    assert tok.get_vocab_size() == VOCAB + extra_tokens
    return tok


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(HF dir, greedy continuation of PROMPT, index of the EOS in it)."""
    path = tmp_path_factory.mktemp("hf-tok") / "hf"
    _hf_model(bos_token_id=BOS, eos_token_id=EOS_IN_CONFIG, pad_token_id=PAD).save_pretrained(path)
    _train_tokenizer().save(str(path / "tokenizer.json"))
    _write_json(path / "tokenizer_config.json", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"})
    model = import_hf(path)
    continuation = list(model.generate(model.tokenizer.encode(PROMPT, add_bos=True), MAX_NEW))
    at = next(i for i in range(2, MAX_NEW) if continuation[i] not in continuation[:i] + [BOS, EOS_IN_CONFIG])
    # generation_config.json outranks config.json: its first EOS is the model's, both stop generation
    _write_json(path / "generation_config.json", {"eos_token_id": [continuation[at], EOS_IN_CONFIG]})
    return path, continuation, at


@pytest.fixture(scope="module")
def checkpoint(hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck-tok") / "ck"
    assert main(["import", str(hf[0]), "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def artifact(hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("art-tok") / "art"
    assert main(["export", "-m", str(hf[0]), "--target", "onnx", "--out", str(out), "--quiet"]) == 0
    return out


def test_special_ids_follow_the_documented_precedence(tmp_path):
    _train_tokenizer().save(str(tmp_path / "tokenizer.json"))
    _write_json(tmp_path / "tokenizer_config.json", {"bos_token": {"content": "<s>"}, "eos_token": "</s>"})
    tok = read_hf_tokenizer(tmp_path, VOCAB)                       # tokenizer_config.json only
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (BOS, EOS_IN_CONFIG, EOS_IN_CONFIG, (1,))
    _write_json(tmp_path / "config.json", {"eos_token_id": 7, "bos_token_id": None, "pad_token_id": 9})
    tok = read_hf_tokenizer(tmp_path, VOCAB)                       # config.json over tokenizer_config.json
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (BOS, 7, 9)     # null counts as absent
    _write_json(tmp_path / "generation_config.json", {"eos_token_id": [5, 6]})
    tok = read_hf_tokenizer(tmp_path, VOCAB)                       # generation_config.json over both
    assert (tok.eos_id, tok.stop_ids, tok.pad_id) == (5, (5, 6), 9)
    _write_json(tmp_path / "generation_config.json", {"eos_token_id": VOCAB})
    with pytest.raises(TokenizerError, match=f"eos token id {VOCAB} is outside the model's vocabulary"):
        read_hf_tokenizer(tmp_path, VOCAB)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").unlink()
    _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<|endoftext|>"})
    with pytest.raises(TokenizerError, match="'<|endoftext|>', which is not in tokenizer.json's vocabulary"):
        read_hf_tokenizer(tmp_path, VOCAB)


def test_checkpoint_carries_the_tokenizer_file_and_refuses_a_tampered_one(hf, checkpoint, tmp_path):
    path, _, _ = hf
    assert (checkpoint / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    tok = load_pretrained(checkpoint).tokenizer
    ids = tok.encode(PROMPT, add_bos=True)
    assert ids[0] == BOS and ids.count(BOS) == 1 and tok.decode(ids) == PROMPT
    assert max(ids) > 255                     # BPE merges, not bytes
    from seqedge.export.api import export_model

    exported = export_model(checkpoint, tmp_path / "art", [], progress=False)      # the torch variant only
    assert exported.tokenizer() == tok and (tmp_path / "art" / "tokenizer.json").read_bytes() == tok.data
    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    data = (copy / "tokenizer.json").read_bytes()
    (copy / "tokenizer.json").write_bytes(data.replace(b'"fox"', b'"fax"', 1) if b'"fox"' in data else data + b" ")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_pretrained(copy)


def test_artifact_lists_hashes_and_loads_the_tokenizer(hf, artifact, tmp_path):
    import seqedge

    path, _, _ = hf
    manifest = read_manifest(artifact)
    record = manifest.data["tokenizer"]
    source = (path / "tokenizer.json").read_bytes()
    assert record["type"] == "hf-tokenizers" and record["file"]["path"] in manifest.files()
    assert record["file"]["sha256"] == hashlib.sha256(source).hexdigest() == hashlib.sha256(
        (artifact / record["file"]["path"]).read_bytes()).hexdigest()
    assert record["vocab_size"] == VOCAB and record["bos_id"] == BOS and record["pad_id"] == PAD
    tok = seqedge.load(artifact, "onnxruntime").tokenizer
    assert isinstance(tok, HFTokenizer) and tok.decode(tok.encode(PROMPT)) == PROMPT
    copy = tmp_path / "art"
    shutil.copytree(artifact, copy)
    (copy / record["file"]["path"]).write_bytes(source[:-1] + b" ")          # same size, other bytes
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        seqedge.load(copy, "onnxruntime").tokenizer
    for key, value, error in [("file", {**record["file"], "path": "../tokenizer.json"}, "must be normalised"),
                              ("file", {**record["file"], "bytes": 1 << 40}, "exceeds the"),
                              ("vocab_size", VOCAB + 1, "tokenizer.vocab_size"),
                              ("eos_id", VOCAB, "must lie in the model's vocabulary")]:
        (copy / "manifest.json").write_text(json.dumps({**manifest.data, "tokenizer": {**record, key: value}}))
        with pytest.raises(ArtifactError, match=error):
            read_manifest(copy)


def test_session_generate_text_stops_at_eos(hf, artifact):
    import seqedge

    _, continuation, at = hf
    session = seqedge.load(artifact, "onnxruntime")
    assert list(session.generate(PROMPT, MAX_NEW)) == continuation[:at + 1]
    assert len(list(session.generate(session.tokenizer.encode(PROMPT, add_bos=True), MAX_NEW))) == MAX_NEW


@pytest.mark.parametrize("source", ["artifact", "checkpoint"])
def test_cli_generate_decodes_with_the_model_tokenizer(hf, artifact, checkpoint, capsys, source):
    _, continuation, at = hf
    model = artifact if source == "artifact" else checkpoint
    assert main(["generate", "-m", str(model), "--prompt", PROMPT, "-n", str(MAX_NEW), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tok = load_pretrained(checkpoint).tokenizer
    assert out["tokens"] == at + 1 and out["text"] == tok.decode(continuation[:at])


def test_server_encodes_and_decodes_with_the_artifact_tokenizer(hf, artifact, checkpoint):
    from seqedge.serve import SchedulerConfig, ServeConfig, build_server
    from seqedge.serve.server import bind_socket

    _, continuation, at = hf
    server = build_server(ServeConfig(str(artifact), "onnxruntime", host="127.0.0.1", port=0, model_name="m",
                                      max_tokens_limit=64, scheduler=SchedulerConfig(slots=1, max_queue=1)))
    sock = bind_socket("127.0.0.1", 0)
    uv = server.uvicorn_server()
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": MAX_NEW, "temperature": 0}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{sock.getsockname()[1]}/v1/completions", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        uv.should_exit = True
        thread.join(30)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == at + 1
    assert choice["text"] == load_pretrained(checkpoint).tokenizer.decode(continuation[:at])


def test_web_runner_refuses_a_tokenizer_json_in_one_line(artifact):
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (apt-get install -y nodejs); the JS runner's check cannot run")
    record = json.dumps(read_manifest(artifact).data["tokenizer"])
    script = (f"import {{ checkTokenizer }} from '{REPO / 'runners/web/src/tokenizer.js'}';"
              f"try {{ checkTokenizer({record}); }} catch (e) {{ console.log(e.message); process.exit(3); }}")
    proc = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and "'hf-tokenizers'" in line and "tokenizer.json" in line


def _with_big_tokenizer(path: Path, out: Path) -> Path:
    out.mkdir()
    for f in path.iterdir():
        if f.name != "tokenizer.json":
            (out / f.name).symlink_to(f)
    _train_tokenizer(extra_tokens=4).save(str(out / "tokenizer.json"))
    return out


@pytest.mark.parametrize("command", ["import", "export"])
def test_a_tokenizer_larger_than_the_vocabulary_is_refused_and_nothing_written(hf, tmp_path, capsys, command):
    source = _with_big_tokenizer(hf[0], tmp_path / "big")
    out = tmp_path / "out"
    args = ["import", str(source), "-o", str(out)] if command == "import" else \
        ["export", "-m", str(source), "--target", "onnx", "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"the tokenizer has {VOCAB + 4} tokens, more than the model's vocab_size {VOCAB}" in err
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_tokenizer_in_another_format_is_refused_not_replaced_by_bytes(hf, tmp_path, capsys):
    """A sentencepiece-only (or vocab.json + merges.txt) directory would import with the byte tokenizer and
    generate garbage: refused in one line that says how to write a tokenizer.json."""
    source = tmp_path / "spm"
    source.mkdir()
    for f in hf[0].iterdir():
        if f.name != "tokenizer.json":
            (source / f.name).symlink_to(f)
    (source / "tokenizer.model").write_bytes(b"not read")
    out = tmp_path / "out"
    assert main(["import", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tokenizer.model" in err and "save_pretrained" in err, err
    assert not out.exists()


def test_native_models_keep_the_byte_tokenizer(tmp_path_factory):
    import seqedge
    from seqedge.defaults import default_checkpoint_dir

    from _artifacts import onnx_artifact

    assert load_pretrained(default_checkpoint_dir()).tokenizer is None
    assert "tokenizer" not in json.loads((default_checkpoint_dir() / "config.json").read_text())
    artifact = onnx_artifact(tmp_path_factory, "gated")
    manifest = read_manifest(artifact)
    assert manifest.data["tokenizer"] == ByteTokenizer().to_dict() and not (artifact / "tokenizer.json").exists()
    assert seqedge.load(artifact, "onnxruntime").tokenizer == ByteTokenizer()
