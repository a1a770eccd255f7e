"""Toxicity instruments: P(toxic) of each text, in 0..1.

Each has a `measure`, the word its numbers go by in evaluation's metric names, so that two kinds of
instrument never share a name or a report column: "toxicity" for a learned toxicity classifier
(tox-block, `hf:MODEL`), "profanity" for a profanity filter (profanity-check).
"""

from __future__ import annotations

import importlib.util
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cdb.scoring.versions import model_version, package_version

if TYPE_CHECKING:
    import torch


class ProfanityCheckScorer:
    """alt-profanity-check: a linear SVM over words, offline, fast; blind to toxicity without profanity."""

    name = "profanity-check"
    measure = "profanity"

    def __init__(self):
        from profanity_check import predict_prob

        self._predict = predict_prob
        self.version = f"alt-profanity-check=={package_version('alt-profanity-check')}"

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self._predict([t if t.strip() else "" for t in texts])]


def _toxic_label(id2label: dict[int, str], where: str) -> int:
    labels = {int(i): str(name).lower() for i, name in id2label.items()}
    exact = [i for i, name in labels.items() if name in ("toxic", "toxicity", "hate", "offensive")]
    if exact:
        return exact[0]
    fuzzy = [i for i, name in labels.items() if "toxic" in name and not re.search(r"non|not", name)]
    if fuzzy:
        return fuzzy[0]
    if len(labels) == 2:
        return 1
    raise ValueError(f"toxicity scorer {where}: cannot tell which label is toxic among {sorted(labels.values())}")


class HFToxicityScorer:
    """A sequence-classification model: softmax (single-label) or sigmoid (multi-label) P of the toxic label."""

    measure = "toxicity"

    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32).to(device).eval()
        self.label = _toxic_label(self.model.config.id2label, model)
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.name = f"hf:{model}"
        self.version = model_version(self.model)

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**batch).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            out += probs[:, self.label].tolist()
        return out


# ---- tox-block: a Jigsaw-trained bidirectional LSTM, read into torch ---------------------------
TOX_BLOCK_VERSION = "0.1.2"
TOX_BLOCK_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
TOX_BLOCK_LENGTH = 100       # tokens per text: the last 100 kept, shorter texts zero-padded in front
TOX_BLOCK_VOCABULARY = 20000  # word indices at or above this are dropped (the Tokenizer's num_words)
# Both of Keras' Tokenizer defaults, as tox-block's encoder was fitted with them.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


def tox_block_dir() -> Path:
    """tox-block's trained_models folder (found, not imported: its prediction module needs TensorFlow)."""
    spec = importlib.util.find_spec("tox_block")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"toxicity scorer 'tox-block': package tox-block is not installed "
                                f"(pip install --no-deps tox-block=={TOX_BLOCK_VERSION})")
    return Path(list(spec.submodule_search_locations)[0]) / "trained_models"


class _Attributes:
    """Stand-in for the two classes tox-block's encoder pickle names (its TokenSequencer and Keras'
    Tokenizer): their state, without TensorFlow."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _EncoderUnpickler(pickle.Unpickler):
    """Unpickles tox-block's encoder with stand-ins; any other class is refused (nothing else runs)."""

    ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "int")}
    STAND_INS = {("tox_block.data_processing.preprocessors", "TokenSequencer"), ("keras_preprocessing.text", "Tokenizer")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.STAND_INS:
            return _Attributes
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"tox-block encoder: unexpected class {module}.{name}")


def keras_word_index(path: Path) -> tuple[dict[str, int], dict]:
    """(word -> index below the vocabulary size, the Tokenizer's settings) of tox-block's encoder pickle."""
    with path.open("rb") as f:
        encoder = _EncoderUnpickler(f).load()
    tokenizer = encoder.tokenizer
    settings = {k: getattr(tokenizer, k) for k in ("filters", "lower", "split", "num_words", "char_level", "oov_token")}
    expected = {"filters": KERAS_FILTERS, "lower": True, "split": " ", "num_words": TOX_BLOCK_VOCABULARY,
                "char_level": False, "oov_token": None}
    if settings != expected or encoder.max_sequence_length != TOX_BLOCK_LENGTH:
        raise ValueError(f"{path}: encoder settings {settings} (length {encoder.max_sequence_length}) are not tox-block "
                         f"{TOX_BLOCK_VERSION}'s")
    return {w: i for w, i in tokenizer.word_index.items() if i < TOX_BLOCK_VOCABULARY}, settings


_SPLIT_FILTERS = str.maketrans({c: " " for c in KERAS_FILTERS})


def keras_sequence(text: str, word_index: dict[str, int], length: int = TOX_BLOCK_LENGTH) -> list[int]:
    """Keras' texts_to_sequences then pad_sequences (defaults): lower-cased, filter characters to
    spaces, split on spaces, unknown and out-of-vocabulary words dropped; the last `length` indices,
    zero-padded in front."""
    words = text.lower().translate(_SPLIT_FILTERS).split(" ")
    ids = [word_index[w] for w in words if w in word_index][-length:]
    return [0] * (length - len(ids)) + ids


def _hard_sigmoid(x: "torch.Tensor") -> "torch.Tensor":
    """Keras 2's hard sigmoid (slope 0.2; torch's hardsigmoid has slope 1/6): tox-block's LSTM gates."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


def _lstm_max(x: "torch.Tensor", kernel: "torch.Tensor", recurrent: "torch.Tensor", bias: "torch.Tensor") -> "torch.Tensor":
    """One direction of a Keras 2 LSTM (gates i, f, c, o in its kernels' columns; hard-sigmoid gates,
    which torch's nn.LSTM cannot have) over x (batch, time, features), max-pooled over time."""
    import torch

    inputs = x @ kernel + bias
    h = x.new_zeros(x.shape[0], recurrent.shape[0])
    c, pooled = torch.zeros_like(h), None
    for t in range(x.shape[1]):
        i, f, g, o = (inputs[:, t] + h @ recurrent).chunk(4, dim=-1)
        c = _hard_sigmoid(f) * c + _hard_sigmoid(i) * torch.tanh(g)
        h = _hard_sigmoid(o) * torch.tanh(c)
        pooled = h if pooled is None else torch.maximum(pooled, h)
    return pooled


class ToxBlockScorer:
    """tox-block 0.1.2 (Pascal Bliem, MIT): GloVe-initialised embeddings, a bidirectional LSTM,
    max-pooling over time and two dense layers, trained on Jigsaw's Toxic Comment Classification
    data (six labels). Its Keras weights (in the wheel) are read with h5py and run in torch; the
    score is the sigmoid P of the `toxic` label, as the network gives it (tox-block's own `rescale`,
    a min-max stretch of about 0.2%, is not applied)."""

    name = "tox-block"
    measure = "toxicity"

    def __init__(self, device: str = "cpu", batch_size: int = 256):
        import h5py
        import torch

        folder = tox_block_dir()
        self.word_index, _ = keras_word_index(folder / f"encoder_{TOX_BLOCK_VERSION}.pkl")
        with h5py.File(folder / f"lstm_model_{TOX_BLOCK_VERSION}.h5", "r") as f:
            weights = f["model_weights"]

            def tensor(layer: str, name: str) -> torch.Tensor:
                return torch.from_numpy(weights[f"{layer}/{name}:0"][()]).float().to(device)

            lstm = "bidirectional/bidirectional/{}_lstm"
            self.embedding = tensor("embedding/embedding", "embeddings")
            self.directions = [tuple(tensor(lstm.format(d), n) for n in ("kernel", "recurrent_kernel", "bias"))
                               for d in ("forward", "backward")]
            self.hidden = (tensor("dense/dense", "kernel"), tensor("dense/dense", "bias"))
            self.out = (tensor("dense_1/dense_1", "kernel"), tensor("dense_1/dense_1", "bias"))
        self.device, self.batch_size = device, batch_size
        self.version = f"tox-block=={package_version('tox-block')}"

    def probabilities(self, texts: Sequence[str]) -> "torch.Tensor":
        """(texts, 6): the sigmoid P of each of TOX_BLOCK_LABELS."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = torch.tensor([keras_sequence(t, self.word_index) for t in texts[start:start + self.batch_size]],
                               device=self.device)
            with torch.no_grad():
                x = self.embedding[ids]
                (fk, fr, fb), (bk, br, bb) = self.directions
                pooled = torch.cat([_lstm_max(x, fk, fr, fb), _lstm_max(x.flip(1), bk, br, bb)], dim=-1)
                hidden = torch.relu(pooled @ self.hidden[0] + self.hidden[1])
                out.append(torch.sigmoid(hidden @ self.out[0] + self.out[1]).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(TOX_BLOCK_LABELS))

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return self.probabilities(list(texts))[:, TOX_BLOCK_LABELS.index("toxic")].tolist()
