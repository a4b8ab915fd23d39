"""The synchronous engine: add requests, step, read outputs. One step = three calls."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace

import torch

from engine.api import (
    Completion,
    InvalidRequestError,
    PromptTooLongError,
    RequestOutput,
    RequestResult,
    RequestTimings,
    SamplingParams,
)
from engine.backend_choice import choose_backend
from engine.backends import Backend, BackendTarget
from engine.config import EngineConfig
from engine.detokenizer import IncrementalDetokenizer
from engine.kv_cache import KVCacheManager
from engine.model_source import ModelBundle, load_model
from engine.model_source.cache import default_cache_dir
from engine.model_source.tokenizer import read_chat_template
from engine.output_processor import OutputProcessor, RequestState
from engine.progress import Progress
from engine.runner import ModelRunner
from engine.sampler import Sampler
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.spec_decode import SpecStats, Speculator, create_proposer
from engine.spec_decode.step_cost import StepCosts, measure_step_costs
from engine.structured_output import GrammarManager
from engine.warmup import EngineCapacity, kv_pool_blocks, warm_up


@dataclass(frozen=True)
class EngineStats:
    """Load figures for routing and metrics, read between steps."""

    num_running: int
    num_waiting: int
    kv_usage: float
    num_free_blocks: int
    num_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    spec: SpecStats | None = None
    """Speculative decoding's totals (None when it is off)."""


@dataclass(frozen=True)
class StepStats:
    """What the last engine step did (for the tokens-per-step and step-time metrics)."""

    num_batched_tokens: int
    num_scheduled_seqs: int
    seconds: float


class LLMEngine:
    """Continuous-batching engine over a paged KV cache, driven one step at a time."""

    def __init__(self, config: EngineConfig, bundle: ModelBundle | None = None) -> None:
        self.config = config
        t0 = time.perf_counter()
        # Read first: a bad template file fails at once, not after minutes of loading.
        template = config.model.chat_template
        template_text = read_chat_template(template) if template is not None else None
        self.bundle = bundle or load_model(
            config.model.path or None, config.model.cache_dir, seed=config.model.seed
        )
        load_seconds = time.perf_counter() - t0 if bundle is None else bundle.load_seconds
        self.tokenizer = self.bundle.tokenizer
        if template_text is not None:
            self.tokenizer = self.tokenizer.with_chat_template(template_text)
        arch = self.bundle.config
        self.max_model_len = min(
            arch.max_position_embeddings, config.model.max_model_len or arch.max_position_embeddings
        )
        cache_dir = config.model.cache_dir or default_cache_dir()
        target = BackendTarget.resolve(config.backend, self.max_model_len, cache_dir)
        choice = choose_backend(target, self.bundle, cache_dir)
        self.backend: Backend = choice.backend
        if bundle is None:
            # The backend keeps the weights in its own form; the float32 originals (538 MB for
            # SmolLM2) would otherwise stay resident for the engine's life. A bundle passed in
            # belongs to the caller, who may build more engines from it.
            self.bundle.weights = {}
        cache, sched = config.cache, config.scheduler
        t1 = time.perf_counter()
        warm_tokens = min(sched.max_num_batched_tokens, self.max_model_len)
        with Progress(f"warming up ({warm_tokens}-token prefill)"):
            _, prefill_tps = warm_up(self.backend, warm_tokens, cache.block_size)
        step_costs = self._step_costs(warm_tokens)
        num_blocks = kv_pool_blocks(self.backend, cache, self.max_model_len)
        self.backend.allocate_kv_cache(num_blocks, cache.block_size)
        self.capacity = EngineCapacity(
            backend=choice.name,
            quantization=choice.quantization,
            backend_reason=choice.reason,
            device=target.device,
            dtype=target.dtype,
            weight_dtype=target.dtype if config.backend.weight_dtype == "same" else "bfloat16",
            num_blocks=num_blocks,
            block_size=cache.block_size,
            kv_cache_bytes=num_blocks * self.backend.kv_bytes_per_block(cache.block_size),
            max_model_len=self.max_model_len,
            max_num_seqs=sched.max_num_seqs,
            max_num_batched_tokens=sched.max_num_batched_tokens,
            max_concurrent_full_context=num_blocks * cache.block_size / self.max_model_len,
            warmup_seconds=time.perf_counter() - t1,
            warmup_prefill_tokens_per_second=prefill_tps,
            model_load_seconds=load_seconds,
        )
        self.kv = KVCacheManager(num_blocks, cache.block_size, cache.enable_prefix_caching)
        proposer = create_proposer(config.speculative)
        self.speculator = (
            Speculator(config.speculative, proposer, step_costs)
            if proposer and step_costs
            else None
        )
        self.scheduler = Scheduler(sched, self.kv, self.speculator)
        sampler = Sampler(torch.Generator().manual_seed(config.model.seed))
        self.runner = ModelRunner(self.backend, cache.block_size, sampler)
        self.outputs = OutputProcessor()
        self.grammars = GrammarManager(self.tokenizer, self.bundle.config.vocab_size)
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()
        self._deadlines: dict[str, float] = {}
        self.last_step = StepStats(0, 0, 0.0)

    # ---- requests --------------------------------------------------------
    def tokenize_prompt(self, prompt: str | Seq[int]) -> list[int]:
        """Token ids of a text or token-id prompt, checked against vocabulary and context."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            vocab = self.bundle.config.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise InvalidRequestError(
                    f"token id {bad[0]} is outside the vocabulary [0, {vocab})"
                )
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens; this model's context length is "
                f"{self.max_model_len}, leaving no room to generate"
            )
        return ids

    def check_params(self, params: SamplingParams) -> None:
        """What only the model can check: token ids of logit_bias within its vocabulary."""
        vocab = self.bundle.config.vocab_size
        bad = [t for t in params.logit_bias if t >= vocab]
        if bad:
            raise InvalidRequestError(
                f"logit_bias token id {bad[0]} is outside the vocabulary [0, {vocab})"
            )

    def add_request(
        self,
        prompt: str | Seq[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        deadline: float | None = None,
    ) -> str:
        """Queue a request (n sequences); raises InvalidRequestError or QueueFullError.

        ``deadline`` is a time.monotonic() instant: a request still running then is
        aborted at the next step and its blocks freed.
        """
        params = params or SamplingParams()
        rid = request_id if request_id is not None else f"req-{next(self._request_ids)}"
        if rid in self.outputs.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in flight")
        ids = self.tokenize_prompt(prompt)
        self.check_params(params)
        eos = tuple(self.tokenizer.eos_token_ids)
        seqs = [
            Sequence(
                next(self._seq_ids),
                rid,
                ids,
                params,
                index=i,
                priority=priority,
                eos_token_ids=eos,
                max_total_tokens=self.max_model_len,
            )
            for i in range(params.n)
        ]
        if params.structured_outputs is not None:
            for seq in seqs:  # compiled already when AsyncEngine added it (off this thread)
                seq.grammar = self.grammars.matcher(params.structured_outputs)
        self.scheduler.add(seqs)
        detoks = [
            IncrementalDetokenizer(self.tokenizer, ids, params.stop, params.skip_special_tokens)
            for _ in seqs
        ]
        self.outputs.add(RequestState(rid, seqs, detoks, seqs[0].timings.arrival))
        if deadline is not None:
            self._deadlines[rid] = deadline
        return rid

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output if it was live."""
        self._deadlines.pop(request_id, None)
        state = self.outputs.requests.get(request_id)
        if state is None:
            return None
        self.scheduler.abort(state.seqs)
        return self.outputs.abort_outputs(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def _step_costs(self, pool_tokens: int) -> StepCosts | None:
        """What a step checking guesses costs (None when speculation is off): as configured,
        or measured on warm-up's scratch pool (which holds ``pool_tokens`` tokens)."""
        spec = self.config.speculative
        if spec.method == "off":
            return None
        rows = spec.num_speculative_tokens + 1
        if spec.guess_cost is not None:
            return StepCosts.linear(spec.guess_cost, rows)
        with Progress(f"measuring decode steps of 1 to {rows} rows (speculation)"):
            return measure_step_costs(self.backend, rows, self.config.cache.block_size, pool_tokens)

    def speculation_summary(self) -> str:
        """The start-up banner's line on speculative decoding, with the measured guess cost,
        and where greedy output may part from speculation off: only torch int8 on CPU sums
        each row exactly whatever else the step feeds; other backends' float sums change with
        a step's row count, so there a near-tie between two tokens can fall the other way."""
        spec = self.config.speculative
        if self.speculator is None:
            return spec.summary()
        line = spec.summary(self.speculator.costs.per_row)
        cap = self.capacity
        if (cap.backend, cap.quantization, cap.device) != ("torch", "int8", "cpu"):
            line += (
                f"; on {cap.backend} {cap.quantization} ({cap.device}) greedy output can differ "
                "from off where two tokens nearly tie (its sums change with a step's rows)"
            )
        return line

    # ---- the loop --------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, execute, update; finish the sequences whose text hit a stop string; then
        turn the updates into request outputs."""
        t0 = time.perf_counter()
        expired = self._abort_expired() if self._deadlines else []
        scheduler_output = self.scheduler.schedule()
        runner_output = self.runner.execute(scheduler_output)
        updates = self.scheduler.update(scheduler_output, runner_output)
        processed = self.outputs.process(updates)
        for stop in processed.stops:  # stop strings, found in the detokenized text
            self.scheduler.finish(stop.seq, stop.reason, stop.stop_reason)
        outputs = self.outputs.request_outputs(processed)
        self.last_step = StepStats(
            scheduler_output.num_batched_tokens,
            len(scheduler_output.scheduled),
            time.perf_counter() - t0,
        )
        if self._deadlines:
            for out in outputs:
                if out.finished:
                    self._deadlines.pop(out.request_id, None)
        return expired + outputs

    def _abort_expired(self) -> list[RequestOutput]:
        now = time.monotonic()
        late = [rid for rid, deadline in self._deadlines.items() if deadline <= now]
        return [out for rid in late if (out := self.abort(rid)) is not None]

    def stats(self) -> EngineStats:
        s = self.kv.stats
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_usage=self.kv.usage,
            num_free_blocks=self.kv.num_free_blocks,
            num_blocks=self.kv.num_blocks,
            prefix_cache_queries=s.queries,
            prefix_cache_hits=s.hits,
            num_preemptions=self.scheduler.num_preemptions,
            spec=self._spec_stats(),
        )

    def _spec_stats(self) -> SpecStats | None:
        """A copy of speculation's totals (None when it is off)."""
        if self.speculator is None:
            return None
        stats = self.speculator.stats
        return replace(stats, accepted_per_position=list(stats.accepted_per_position))

    def generate(
        self,
        prompts: Seq[str | Seq[int]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestResult]:
        """Run prompts to completion together; results in prompt order."""
        plist: list[SamplingParams]
        if params is None or isinstance(params, SamplingParams):
            plist = [params or SamplingParams()] * len(prompts)
        else:
            plist = list(params)
        results: dict[str, RequestResult] = {}
        order = []
        for prompt, p in zip(prompts, plist, strict=True):
            rid = self.add_request(prompt, p)
            state = self.outputs.requests[rid]
            results[rid] = RequestResult(
                rid,
                state.seqs[0].prompt_token_ids,
                [Completion(i) for i in range(p.n)],
                0,
                RequestTimings(),
            )
            order.append(rid)
        while self.has_unfinished():
            for out in self.step():
                results[out.request_id].absorb(out)
        return [results[rid] for rid in order]
