"""Fixtures of the data tests: a tiny byte-level BPE tokenizer folder (vocab.json + merges.txt)."""
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

CORPUS = [
    ("The food was great.", "but the service was slow and the waiter, rude!"),
    ("battery life", "The battery life of this laptop is amazing; it lasts all day."),
    ("Héllo wörld", "accents and UPPER case"),
]


@pytest.fixture
def bpe_folder(tmp_path):
    """A tiny byte-level BPE vocabulary (vocab.json + merges.txt) trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [first + " " + second for first, second in CORPUS] * 10
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.model.save(str(tmp_path))
    return tmp_path
