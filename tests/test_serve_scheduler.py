"""The serving scheduler without HTTP: slots, admission, batched steps, sampling, stop strings, cancellation."""

from __future__ import annotations

import numpy as np
import pytest

import seqedge
from seqedge.sampling import SamplingConfig
from seqedge.serve import Delta, GenerationRequest, QueueFull, Scheduler, SchedulerConfig, Unavailable
from seqedge.serve.slots import BatchPlan, SlotStates, host_logits, metadata_batch_limit, probe_batching
from seqedge.serve.text import StopMatcher, render_chat, tokenizer_from_manifest
from seqedge.tokenizer import ByteTokenizer

from _artifacts import onnx_artifact

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return onnx_artifact(tmp_path_factory, "gated")


@pytest.fixture(scope="module")
def session(artifact):
    return seqedge.load(artifact, "onnxruntime")


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    """``n`` random byte prompts after BOS, of lengths that cross chunk and prefill-piece boundaries."""
    rng = np.random.default_rng(seed)
    lengths = [1, 15, 16, 17, 70, 3, 40, 129][:n]
    return [[TOK.bos_id, *rng.integers(0, 256, size=length - 1).tolist()] for length in lengths]


def alone(session, prompt, max_tokens, sampling=SamplingConfig()) -> tuple[list[int], str]:
    """The single-stream Session's tokens and text (what every scheduled stream must reproduce)."""
    tokens = list(session.generate(prompt, max_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                                   top_p=sampling.top_p, seed=sampling.seed, stop_tokens=(TOK.eos_id,)))
    return tokens, TOK.decode(tokens)


class Collector:
    """The ``emit`` callback of one stream: keeps its deltas."""

    def __init__(self) -> None:
        self.deltas: list[Delta] = []

    def __call__(self, delta: Delta) -> None:
        self.deltas.append(delta)

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def finish(self) -> str | None:
        return self.deltas[-1].finish_reason if self.deltas else None


def drain(scheduler: Scheduler, limit: int = 10_000) -> int:
    ticks = 0
    while scheduler.has_work():
        scheduler.tick()
        ticks += 1
        assert ticks < limit, "the scheduler did not finish its streams"
    return ticks


def running(scheduler: Scheduler) -> Scheduler:
    """The scheduler accepting requests without its thread: the test drives the ticks itself."""
    scheduler.accept()
    return scheduler


# text ---------------------------------------------------------------------------------------------------------
def test_stop_matcher_matches_cutting_the_whole_text_on_random_splits():
    """Pieces pushed one by one emit exactly the text before the first stop string, however they are split."""
    rng = np.random.default_rng(0)
    alphabet = list("ab<|\n")
    for _ in range(300):
        full = "".join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
        stops = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 4)))) for _ in range(int(rng.integers(1, 3)))]
        cuts = sorted(rng.choice(len(full) + 1, size=min(len(full), 4), replace=False).tolist()) if full else []
        pieces = [full[a:b] for a, b in zip([0, *cuts], [*cuts, len(full)])]
        matcher = StopMatcher(stops)
        out = "".join(matcher.push(p)[0] for p in pieces) + matcher.flush()
        hits = [i for i in (full.find(s) for s in stops) if i >= 0]
        assert out == (full[:min(hits)] if hits else full), (full, stops, pieces)
        assert matcher.stopped == bool(hits)


def test_chat_template_and_tokenizer_lookup():
    assert render_chat([("system", "be brief"), ("user", "hi")]) == \
        "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    with pytest.raises(ValueError, match="unknown chat role 'tool'"):
        render_chat([("tool", "x")])
    assert tokenizer_from_manifest({"tokenizer": TOK.to_dict()}) == TOK
    with pytest.raises(ValueError, match="tokenizer type 'sentencepiece'"):
        tokenizer_from_manifest({"tokenizer": {"type": "sentencepiece"}})


def test_configs_name_the_bad_field():
    with pytest.raises(ValueError, match="slots"):
        SchedulerConfig(slots=0)
    with pytest.raises(ValueError, match="batching"):
        SchedulerConfig(batching="sometimes")
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationRequest((1,), 0)
    with pytest.raises(ValueError, match="prompt"):
        GenerationRequest((), 4)


def test_metadata_batch_limit():
    assert metadata_batch_limit({}) is None
    assert metadata_batch_limit({"batch": {"min": 1, "max": 8}}) == 8
    assert metadata_batch_limit({"batch_sizes": [1]}) == 1
    assert metadata_batch_limit({"batch_sizes": [1, 2, 4]}) == 2


def test_host_logits_from_numpy_and_torch():
    import torch

    half = host_logits(torch.arange(6, dtype=torch.bfloat16).reshape(2, 3))
    assert half.dtype == np.float32 and half.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert host_logits(torch.zeros(1, 3, dtype=torch.float64)).dtype == np.float64
    assert host_logits(np.ones((1, 3), np.float32)).dtype == np.float32


# batched step -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_batched_step_of_slots_equals_each_stream_alone(artifact, runtime):
    """Stepping slots [3, 0, 2] together gives each stream the logits and state it gets alone (carried state,
    several steps, a slot left idle)."""
    session = seqedge.load(artifact, runtime)
    rng = np.random.default_rng(1)
    slots = SlotStates(session, 4, BatchPlan(None, "test"))
    order = [3, 0, 2]
    singles = {}
    for slot, prompt in zip(order, prompts(3, seed=1)):
        slots.reset(slot)
        last = slots.prefill(slot, prompt)
        logits, singles[slot] = session.prefill([prompt], session.init_state(1))
        np.testing.assert_array_equal(last, logits[0, -1])
    for _ in range(5):
        tokens = rng.integers(0, 256, size=len(order))
        batched = slots.step(order, tokens.tolist())
        for row, (slot, token) in enumerate(zip(order, tokens)):
            logits, singles[slot] = session.step([int(token)], singles[slot])
            np.testing.assert_allclose(batched[row], logits[0], rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    for slot in order:
        for whole, single in zip(slots.state.numpy(), singles[slot].numpy()):
            np.testing.assert_allclose(whole[slot], single[0], rtol=1e-5, atol=1e-6)
    assert not np.any(slots.state.numpy()[1][1])          # slot 1 never ran: still zero


class _CoupledRows:
    """A session whose step mixes the rows of a batch, as one dynamic quantization scale per batch does."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, tokens, state):
        logits, state = self.inner.step(tokens, state)
        logits = host_logits(logits)
        return logits + 1e-2 * logits.mean(0, keepdims=True), state


def test_probe_batches_independent_rows_and_refuses_coupled_ones(artifact, session):
    """fp32 rows are independent, and so are int8's (MatMulNBits quantizes activations per row and block); a step
    that couples rows is stepped one slot at a time."""
    fp32 = probe_batching(session, 8)
    assert fp32.batched and fp32.max_deviation <= 1e-5, fp32
    int8 = probe_batching(seqedge.load(artifact, "onnxruntime", quantization="int8"), 8)
    assert int8.batched and int8.max_deviation <= 1e-3, int8
    coupled = probe_batching(_CoupledRows(session), 8)
    assert not coupled.batched and coupled.group == 1 and coupled.max_deviation > 1e-3, coupled
    assert probe_batching(session, 1).group == 1


# scheduling ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batching", ["auto", "serial"])
def test_streams_admitted_over_time_match_single_stream_generation(session, batching):
    """Six streams through three slots, admitted at different ticks, greedy and seeded sampling: each stream's
    text equals the single-stream Session's; slots are reused as streams end."""
    scheduler = running(Scheduler(session, TOK, SchedulerConfig(slots=3, max_queue=8, prefill_chunks=1,
                                                                batching=batching)))
    assert scheduler.states.plan.batched == (batching == "auto")
    samplings = [SamplingConfig(), SamplingConfig(0.9, 20, 0.95, seed=7)] * 3
    cases = []
    for i, (prompt, sampling) in enumerate(zip(prompts(6), samplings)):
        collector = Collector()
        request = GenerationRequest(tuple(prompt), 6 + 3 * i, sampling)
        cases.append((request, collector, scheduler.submit(request, collector)))
        scheduler.tick()
    drain(scheduler)
    for request, collector, stream in cases:
        tokens, text = alone(session, list(request.prompt), request.max_tokens, request.sampling)
        assert collector.text == text
        assert collector.finish == ("stop" if tokens[-1] == TOK.eos_id else "length")
        assert stream.completion_tokens == len(tokens) and stream.prompt_tokens == len(request.prompt)
    health = scheduler.describe()
    assert health["completed"] == 6 and health["active"] == 0
    if batching == "auto":       # streams overlapped, so some step calls carried several of them
        assert health["step_calls"] < health["rows_stepped"]
    else:
        assert health["step_calls"] == health["rows_stepped"]


def test_stop_string_ends_the_stream_without_emitting_it(session):
    prompt = prompts(5)[4]
    _, text = alone(session, prompt, 24)
    stop = text[5:7]
    assert len(stop) == 2, f"the model's greedy text is too short for this test: {text!r}"
    collector = Collector()
    scheduler = running(Scheduler(session, TOK, SchedulerConfig(slots=2)))
    scheduler.submit(GenerationRequest(tuple(prompt), 24, stop=("never there", stop)), collector)
    drain(scheduler)
    assert collector.finish == "stop" and collector.text == text[:text.find(stop)]


def test_queue_full_unavailable_and_cancellation_free_slots(session):
    scheduler = Scheduler(session, TOK, SchedulerConfig(slots=1, max_queue=1))
    request = GenerationRequest(tuple(prompts(2)[1]), 50)
    with pytest.raises(Unavailable):
        scheduler.submit(request, Collector())
    running(scheduler)
    first, second = Collector(), Collector()
    s1 = scheduler.submit(request, first)
    s2 = scheduler.submit(request, second)
    with pytest.raises(QueueFull, match="1 slots are busy"):
        scheduler.submit(request, Collector())
    scheduler.tick()
    assert s1.slot == 0 and s2.slot is None and first.deltas
    s1.cancel()
    scheduler.tick()                                   # frees slot 0 and admits the waiting stream into it
    assert first.finish == "cancelled" and s2.slot == 0 and second.deltas
    s2.cancel()
    drain(scheduler)
    assert second.finish == "cancelled" and scheduler.counts["cancelled"] == 2 and scheduler.counts["rejected"] == 1
    assert scheduler.describe()["active"] == 0


def test_a_stream_ends_only_after_its_slot_is_free(session):
    """A client that sends its next request the moment it sees the end of the last one, on a full server, is
    admitted: the final delta goes out after the slot is released, not before."""
    scheduler = running(Scheduler(session, TOK, SchedulerConfig(slots=1, max_queue=1)))
    outcomes: list[object] = []

    class Resubmitting(Collector):
        def __call__(self, delta: Delta) -> None:
            super().__call__(delta)
            if delta.finish_reason is not None:
                try:
                    outcomes.append(scheduler.submit(GenerationRequest(tuple(prompts(1)[0]), 3), Collector()))
                except QueueFull as err:
                    outcomes.append(err)

    short, held = Resubmitting(), Collector()
    scheduler.submit(GenerationRequest(tuple(prompts(2)[1]), 2), short)
    scheduler.submit(GenerationRequest(tuple(prompts(2)[1]), 2), held)      # fills the queue
    drain(scheduler)
    assert short.finish in ("stop", "length") and held.finish in ("stop", "length")
    assert len(outcomes) == 1 and not isinstance(outcomes[0], QueueFull), outcomes
    assert scheduler.counts["rejected"] == 0 and scheduler.counts["completed"] == 3


class FailingSession:
    """A Session whose step raises after a given number of calls (a runtime that breaks while serving)."""

    def __init__(self, session, ok_steps: int) -> None:
        self.session, self.ok_steps = session, ok_steps
        self.variant, self.specs, self.chunk_size = session.variant, session.specs, session.chunk_size
        self.vocab_size, self.init_state, self.prefill = session.vocab_size, session.init_state, session.prefill

    def step(self, tokens, state):
        if self.ok_steps <= 0:
            raise RuntimeError("device lost")
        self.ok_steps -= 1
        return self.session.step(tokens, state)


def test_runtime_failure_ends_the_affected_streams_with_the_error(session):
    scheduler = running(Scheduler(FailingSession(session, 3), TOK, SchedulerConfig(slots=2, batching="serial")))
    collectors = [Collector(), Collector()]
    for collector, prompt in zip(collectors, prompts(2)):
        scheduler.submit(GenerationRequest(tuple(prompt), 20), collector)
    drain(scheduler)
    assert [c.finish for c in collectors] == ["error", "error"]
    assert "device lost" in collectors[0].deltas[-1].error and "device lost" in scheduler.last_error
    assert scheduler.counts["failed"] == 2 and scheduler.describe()["active"] == 0
