"""Tokenizers: CLIP BPE parity with open_clip golden ids, BPE pieces by hand, WordPiece by hand, vocabulary assets."""

import json
import pathlib
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from lmstruct.data import assets, tokenize

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "clip_tokenizer_golden.json"


@pytest.fixture(scope="module")
def clip():
  return tokenize.get_tokenizer("clip")


def _padded(ids, length):
  row = np.zeros(length, np.int32)
  row[: len(ids)] = ids
  return row


def test_clip_matches_open_clip_golden_ids(clip):
  cases = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]
  assert len({c["text"] for c in cases}) >= 50
  short = tokenize.get_tokenizer("clip", context_length=16)
  by_length = {77: clip, 16: short}
  for length, tok in by_length.items():
    chosen = [c for c in cases if c["context_length"] == length]
    got = tok([c["text"] for c in chosen])
    assert got.dtype == np.int32 and got.shape == (len(chosen), length)
    for row, case in zip(got, chosen):
      np.testing.assert_array_equal(row, _padded(case["ids"], length), err_msg=repr(case["text"]))


def test_clip_special_tokens_and_truncation(clip):
  assert (clip.vocab_size, clip.context_length, clip.sot_token_id, clip.eot_token_id, clip.pad_id) == (
    49408,
    77,
    49406,
    49407,
    0,
  )
  np.testing.assert_array_equal(clip([""])[0], _padded([49406, 49407], 77))
  long = clip(["many words " * 100])[0]
  assert long[0] == 49406 and long[-1] == 49407 and np.all(long != 0)
  tiny = tokenize.get_tokenizer("clip", context_length=4)(["a photo of a cat", "cat"])
  np.testing.assert_array_equal(tiny, [[49406, 320, 1125, 49407], [49406, 2368, 49407, 0]])


def test_tokenizers_pickle_for_grain_workers(clip, tmp_path):
  texts = ["a photo of a cat", "The cats playing!"]
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(clip))(texts), clip(texts))
  wordpiece = tokenize.WordPieceTokenizer(_tokenizer_json(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(wordpiece))(texts), wordpiece(texts))


def test_clip_rejects_bad_arguments(clip):
  with pytest.raises(TypeError, match="list of strings"):
    clip("a photo")
  with pytest.raises(TypeError, match="int"):
    clip(["ok", 3])
  with pytest.raises(ValueError, match="context_length"):
    tokenize.ClipTokenizer(context_length=1)


def test_byte_to_unicode():
  mapping = tokenize.byte_to_unicode()
  assert sorted(mapping) == list(range(256)) and len(set(mapping.values())) == 256
  assert all(c.isprintable() and not c.isspace() for c in mapping.values())
  assert mapping[ord("a")] == "a" and mapping[ord(" ")] == "Ġ" and mapping[0] == "Ā"
  assert list(mapping)[:2] == [ord("!"), ord('"')]


def test_bpe_merges_by_hand():
  assert tokenize.merge_pair(["a", "a", "a"], ("a", "a")) == ["aa", "a"]
  ranks = {("l", "o"): 0, ("lo", "w</w>"): 1, ("e", "r</w>"): 2, ("w", "er</w>"): 3}
  assert tokenize.bpe("low", ranks) == ["low</w>"]
  # lower: l o w e r</w> -> lo w e r</w> -> lo w er</w> -> lo wer</w>
  assert tokenize.bpe("lower", ranks) == ["lo", "wer</w>"]
  assert tokenize.bpe("x", ranks) == ["x</w>"]


def test_clean_text():
  assert tokenize.clean_text("  Caf&amp;amp;é\n\t BIG  ") == "caf&é big"
  assert tokenize.clean_text("CafÃ©") == "café"


def test_pack_tokens():
  packed = tokenize.pack_tokens([[5, 6, 7, 8, 9], [5, 9]], context_length=4, eot_token_id=9)
  np.testing.assert_array_equal(packed, [[5, 6, 7, 9], [5, 9, 0, 0]])


def test_registry():
  with pytest.raises(ValueError, match=r"^unknown tokenizer 'sentencepiece'; valid choices: \['clip', 'wordpiece'\]$"):
    tokenize.get_tokenizer("sentencepiece")
  with pytest.raises(ValueError, match=r"^unknown tokenizer 'wordpeice' \(did you mean 'wordpiece'\?\)"):
    tokenize.get_tokenizer("wordpeice")


# --- WordPiece -----------------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "##s", "play", "##ing", "!", "a", "dog"]


def _tokenizer_json(path, vocab=VOCAB):
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

  tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))]
  )
  tok.save(str(path))
  return path


def test_wordpiece_by_hand(tmp_path):
  tok = tokenize.get_tokenizer("wordpiece", path=_tokenizer_json(tmp_path / "tokenizer.json"), context_length=10)
  assert (tok.vocab_size, tok.context_length, tok.eot_token_id, tok.pad_id) == (12, 10, 3, 0)
  got = tok(["The cats PLAYING!", "a zebra", ""])
  assert got.dtype == np.int32
  np.testing.assert_array_equal(
    got, [[2, 4, 5, 6, 7, 8, 9, 3, 0, 0], [2, 10, 1, 3, 0, 0, 0, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0, 0, 0, 0]]
  )
  short = tokenize.WordPieceTokenizer(tmp_path / "tokenizer.json", context_length=5)
  np.testing.assert_array_equal(short(["the cat the dog the cat"]), [[2, 4, 5, 4, 3]])


def test_wordpiece_bad_input(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
    tokenize.WordPieceTokenizer(tmp_path / "absent.json")
  path = _tokenizer_json(tmp_path / "t.json")
  with pytest.raises(ValueError, match="eot_token='</s>'"):
    tokenize.WordPieceTokenizer(path, eot_token="</s>")
  swapped = ["[UNK]", "[PAD]", *VOCAB[2:]]
  with pytest.raises(ValueError, match="must have id 0"):
    tokenize.WordPieceTokenizer(_tokenizer_json(tmp_path / "swapped.json", swapped))


# --- vocabulary asset ----------------------------------------------------------------------------------------------


def _fake_pip(vocab_bytes, calls):
  def download(requirement, dest):
    calls.append(requirement)
    with zipfile.ZipFile(dest / "open_clip_torch-3.3.0-py3-none-any.whl", "w") as wheel:
      wheel.writestr(assets.CLIP_VOCAB_MEMBER, vocab_bytes)

  return download


def test_fetch_is_idempotent_and_verified(tmp_path, monkeypatch):
  real = assets.require_clip_vocab()
  assert assets.sha256_of(real) == assets.CLIP_VOCAB_SHA256
  monkeypatch.setenv("LMSTRUCT_ASSETS", str(tmp_path / "cache"))
  calls = []
  assert assets.fetch_clip_vocab(_fake_pip(real.read_bytes(), calls)) == tmp_path / "cache" / assets.CLIP_VOCAB_NAME
  assert calls == ["open_clip_torch==3.3.0"]
  assets.fetch_clip_vocab(_fake_pip(b"unused", calls))
  assert len(calls) == 1  # present and verified: nothing downloaded
  tok = tokenize.ClipTokenizer()
  np.testing.assert_array_equal(tok(["a photo of a cat"])[0, :7], [49406, 320, 1125, 539, 320, 2368, 49407])
  assert list(tmp_path.joinpath("cache").iterdir()) == [tmp_path / "cache" / assets.CLIP_VOCAB_NAME]


def test_fetch_rejects_wrong_checksum(tmp_path, monkeypatch):
  monkeypatch.setenv("LMSTRUCT_ASSETS", str(tmp_path))
  with pytest.raises(assets.AssetError, match="expected 924691ac"):
    assets.fetch_clip_vocab(_fake_pip(b"tampered", []))
  assert not assets.clip_vocab_path().exists()


def test_missing_vocab_says_how_to_fetch(tmp_path, monkeypatch):
  monkeypatch.setenv("LMSTRUCT_ASSETS", str(tmp_path))
  with pytest.raises(assets.AssetError, match="python -m lmstruct.data.assets fetch"):
    tokenize.get_tokenizer("clip")


def test_fetch_cli_uses_cached_copy(tmp_path, monkeypatch, capsys):
  shutil.copy(assets.require_clip_vocab(), tmp_path / assets.CLIP_VOCAB_NAME)
  monkeypatch.setenv("LMSTRUCT_ASSETS", str(tmp_path))
  monkeypatch.setattr(assets, "pip_download", lambda *a: pytest.fail("downloaded although cached"))
  assert assets.main(["fetch"]) == 0
  assert str(tmp_path / assets.CLIP_VOCAB_NAME) in capsys.readouterr().out
