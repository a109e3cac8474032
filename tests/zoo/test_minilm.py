"""MiniLM-L6 encoder vs the sentence-transformers reference, and the TweetClassifier head."""

from __future__ import annotations

import pytest
import torch

from torchslim.data import health_tweets
from torchslim.zoo.minilm import MiniLMEncoder, mean_pool, minilm, minilm_path
from torchslim.zoo.text_classifier import TweetClassifier, embed_texts


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return minilm()


@pytest.fixture(scope="module")
def tweets() -> list[str]:
    ds = health_tweets()
    return [ds.texts[i] for i in range(0, len(ds), 9_000)]  # 8 real tweets from several outlets


def test_embeddings_equal_sentence_transformers(encoder, tweets):
    """metric: max abs difference of the embeddings, tolerance 1e-5."""
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm_path()), device="cpu").encode(tweets, batch_size=4)
    ours = encoder.encode(tweets, batch_size=3)
    assert ours.shape == (len(tweets), 384)
    assert float((ours - torch.from_numpy(ref)).abs().max()) < 1e-5
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(tweets)), rtol=0, atol=1e-5)


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(h, mask), torch.tensor([[2.0, 3.0]]), rtol=0, atol=0)


def test_batching_does_not_change_embeddings(encoder, tweets):
    """metric: max abs diff between batch sizes 1 and 8 (padding differs), tolerance 1e-5."""
    a = encoder.encode(tweets, batch_size=1)
    b = encoder.encode(tweets, batch_size=8)
    assert float((a - b).abs().max()) < 1e-5


def test_tweet_classifier_head_and_end_to_end(encoder, tweets):
    torch.manual_seed(0)
    head = TweetClassifier(num_classes=16)
    emb = embed_texts(encoder, tweets)
    logits = head(emb)
    assert logits.shape == (len(tweets), 16)
    full = TweetClassifier(num_classes=16, encoder=encoder)
    full.head.load_state_dict(head.head.state_dict())
    batch = encoder.tokenize(tweets)
    # exact same head on the same embeddings: end-to-end logits equal head-only logits (allclose 1e-5)
    torch.testing.assert_close(full.eval()(**batch), logits, rtol=0, atol=1e-5)
    assert torch.equal(full.predict(tweets), logits.argmax(1))


def test_untrained_minilm_differs(tweets):
    rnd = minilm(pretrained=False)
    assert sum(p.numel() for p in rnd.parameters()) == 22_713_216
    assert rnd.eval().encode(tweets[:2]).shape == (2, 384)
