"""The model: step == forward, carried state == one pass, generation, input and state checks, preset sizes."""

from __future__ import annotations

import pytest
import torch

from seqedge.config import SequentialAttentionConfig
from seqedge.model import SequentialAttentionModel

RULES = ("gated", "delta")
TOL = 2e-5  # float32, relative to the largest entry (see test_scan.py)


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape and torch.isfinite(actual).all()
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def random_tokens(gen, batch, length, vocab=259):
    return torch.randint(0, vocab, (batch, length), generator=gen)


@pytest.fixture(params=RULES)
def model(request, make_tiny_config, make_tiny_model):
    return make_tiny_model(make_tiny_config(update_rule=request.param))


@torch.no_grad()
def test_step_reproduces_forward(model, gen):
    """Token by token (recurrent form) == one forward pass (chunked form): logits at every position, final state."""
    T = 2 * model.config.chunk_size + 7                                          # not a multiple of the chunk
    tokens = random_tokens(gen, 2, T)
    logits, state = model(tokens)
    assert logits.shape == (2, T, model.config.vocab_size) and logits.dtype == torch.float32
    step_state = model.init_state(batch_size=2)
    step_logits = []
    for t in range(T):
        out, step_state = model.step(tokens[:, t], step_state)
        step_logits.append(out)
    assert scaled_error(torch.stack(step_logits, dim=1), logits) < TOL
    for a, b, spec in zip(step_state.tensors, state.tensors, state.specs):
        assert scaled_error(a, b) < TOL, spec.name


@torch.no_grad()
def test_two_halves_with_carried_state_equal_whole(model, gen):
    tokens = random_tokens(gen, 2, 45)
    logits, state = model(tokens)
    first, mid = model(tokens[:, :21])                                           # split inside a chunk
    second, end = model(tokens[:, 21:], mid)
    assert scaled_error(torch.cat([first, second], dim=1), logits) < TOL
    for a, b in zip(end.tensors, state.tensors):
        assert scaled_error(a, b) < TOL


@torch.no_grad()
def test_state_size_does_not_grow(model, gen):
    _, short = model(random_tokens(gen, 1, 3))
    _, long = model(random_tokens(gen, 1, 100))
    assert [t.shape for t in short.tensors] == [t.shape for t in long.tensors]
    assert [tuple(t.shape) for t in short.tensors] == [s.concrete_shape(1) for s in model.state_specs]


def test_generate_is_deterministic_with_a_seed(model):
    prompt = [256, 72, 105]
    a = list(model.generate(prompt, 12, temperature=1.0, seed=7))
    b = list(model.generate(prompt, 12, temperature=1.0, seed=7))
    c = list(model.generate(prompt, 12, temperature=1.0, seed=8))
    assert len(a) == 12 and a == b
    assert a != c                    # near-uniform logits of a random model: 12 equal draws have probability ~1e-29
    assert all(0 <= t < model.config.vocab_size for t in a)


@torch.no_grad()
def test_generate_greedy_at_temperature_zero(model):
    prompt = [256, 72, 105]
    generated = list(model.generate(prompt, 8, temperature=0.0, seed=123))
    assert generated == list(model.generate(prompt, 8, temperature=0.0, seed=456))
    seq = list(prompt)
    for token in generated:                                                      # each token is the argmax
        logits, _ = model(torch.tensor([seq]))
        assert token == int(logits[0, -1].argmax())
        seq.append(token)


def test_generate_stops_at_stop_token(model):
    first = next(iter(model.generate([256, 65], 1, temperature=0.0)))
    assert list(model.generate([256, 65], 10, temperature=0.0, stop_tokens=(first,))) == [first]


def test_generate_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="prompt"):
        list(model.generate([], 3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(model.generate([1], -1))
    with pytest.raises(ValueError, match="temperature"):
        list(model.generate([1], 3, temperature=-1.0))


@pytest.mark.parametrize("bad, what", [
    (torch.tensor([[0, 259]]), "token ids"),                                    # == vocab_size
    (torch.tensor([[-1, 3]]), "token ids"),
    (torch.tensor([[1.0, 2.0]]), "integer"),
    (torch.tensor([1, 2]), "rank 2"),
    (torch.tensor([[[1, 2]]]), "rank 2"),
])
def test_forward_rejects_bad_tokens(model, bad, what):
    with pytest.raises(ValueError, match=what):
        model(bad)


@pytest.mark.parametrize("bad, what", [
    (torch.tensor([300]), "token ids"),
    (torch.tensor([1.0]), "integer"),
    (torch.tensor([[1]]), "rank 1"),
])
def test_step_rejects_bad_tokens(model, bad, what):
    with pytest.raises(ValueError, match=what):
        model.step(bad, model.init_state())


def test_state_of_another_model_is_rejected(model, make_tiny_config, make_tiny_model):
    other = make_tiny_model(make_tiny_config(update_rule=model.config.update_rule, num_heads=4, head_k_dim=8))
    with pytest.raises(ValueError, match="another model"):
        model.step(torch.tensor([1]), other.init_state())
    with pytest.raises(ValueError, match="another model"):
        model(torch.tensor([[1, 2]]), other.init_state())


def test_state_with_wrong_batch_is_rejected(model):
    with pytest.raises(ValueError, match="batch"):
        model(torch.tensor([[1, 2], [3, 4]]), model.init_state(batch_size=1))
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(batch_size=0)


@pytest.mark.parametrize("name, low, high", [("tiny", 1e6, 3e6), ("small", 22.5e6, 27.5e6),
                                             ("base", 112.5e6, 137.5e6)])
def test_preset_parameter_counts(name, low, high):
    """tiny 1-3M, small ~25M, base ~125M (within 10%); built on the meta device, so no memory is allocated."""
    with torch.device("meta"):
        model = SequentialAttentionModel(SequentialAttentionConfig.preset(name))
    assert low <= model.num_parameters() <= high, model.num_parameters()


def test_untied_head_adds_parameters(make_tiny_config, make_tiny_model):
    tied = make_tiny_model(make_tiny_config())
    untied = make_tiny_model(make_tiny_config(tie_embeddings=False))
    assert untied.num_parameters() - tied.num_parameters() == 259 * 32
